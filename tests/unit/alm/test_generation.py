"""Batched greedy / beam candidates and their cumulative log-likelihoods, the exact next-token distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qwen2_fixtures import RATE, tiny_qwen2_audio_processor, tone
from transformers import GenerationConfig, Qwen2AudioProcessor, WhisperFeatureExtractor

from ser_lightning.alm.generation import (
    Candidates,
    continuation_log_likelihoods,
    generate_candidates,
    next_token_distribution,
)
from ser_lightning.alm.prompts import annotation_conversation
from ser_lightning.nn.qwen2_audio.offline import TINY_QWEN2_AUDIO_CONFIG, random_qwen2_audio

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
EOS, ENDOFTEXT = 3, 1  # <|im_end|>, <|endoftext|> in the offline vocabulary (128 tokens)
pytestmark = pytest.mark.timeout(120)


def short_tiny(seed: int = 0, eos_prone: bool = True) -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    """The tiny model with a 1 s encoder window; ``eos_prone`` makes <|im_end|> win where token 66 would.

    Its EOS row of ``lm_head`` is 1.2 x token 66's, so candidates end after different numbers of tokens and the
    batch carries padding after EOS: the path that must not count.
    """
    audio = {**TINY_QWEN2_AUDIO_CONFIG["audio_config"], "max_source_positions": 50}
    model = random_qwen2_audio({**TINY_QWEN2_AUDIO_CONFIG, "audio_config": audio}, seed=seed)
    if eos_prone:
        with torch.no_grad():
            model.lm_head.weight[EOS] = 1.2 * model.lm_head.weight[66]
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE, chunk_length=1)
    return model, Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tiny_qwen2_audio_processor().tokenizer)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    return short_tiny()


CLIPS = [(tone(0.3, 200), "i am so happy"), (tone(0.9, 300), "leave me alone")]  # different lengths: padding


def make_inputs(processor: Qwen2AudioProcessor, which: list[int]) -> dict[str, torch.Tensor]:
    """Chat template + processor, left padded, as ``Qwen2AudioAnnotator._inputs`` builds them."""
    texts = [
        processor.apply_chat_template(
            annotation_conversation(CLIPS[i][0], CLIPS[i][1], CLASSES, 0), add_generation_prompt=True, tokenize=False
        )
        for i in which
    ]
    return dict(
        processor(
            text=texts,
            audio=[CLIPS[i][0] for i in which],
            sampling_rate=RATE,
            return_tensors="pt",
            padding="longest",
            padding_side="left",
        )
    )


def reference_generate(model: torch.nn.Module, inputs: dict, beams: int, length_penalty: float, steps: int = 12):
    """The test's own generate call (independent config) and its per-token transition scores."""
    config = GenerationConfig(
        do_sample=False, max_new_tokens=steps, eos_token_id=[EOS, ENDOFTEXT], pad_token_id=ENDOFTEXT,
        num_beams=beams, num_return_sequences=beams, length_penalty=length_penalty,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
        scores = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices, normalize_logits=False)
    return out, scores


def test_beam_alpha_is_the_sum_of_transition_scores(tiny) -> None:
    model, processor = tiny
    inputs = make_inputs(processor, [0, 1])
    got = generate_candidates(model, processor.tokenizer, inputs, num_beams=3, max_new_tokens=12)
    assert isinstance(got, Candidates)
    assert got.log_likelihood.dtype == torch.float64
    assert got.log_likelihood.shape == got.num_tokens.shape == (2, 3)
    out, scores = reference_generate(model, inputs, 3, 0.0)
    lengths = (out.beam_indices >= 0).sum(dim=1)  # HF marks the steps after a beam finished with -1
    np.testing.assert_allclose(got.log_likelihood.flatten().numpy(), scores.sum(dim=1).double().numpy(), atol=1e-5)
    # length_penalty=0: sequences_scores is the cumulative sum itself, the beams come best first
    np.testing.assert_allclose(got.log_likelihood.flatten().numpy(), out.sequences_scores.numpy(), atol=1e-4)
    assert (got.num_tokens.flatten() == lengths).all()
    assert (got.log_likelihood[:, :-1] >= got.log_likelihood[:, 1:] - 1e-9).all()
    assert len(set(got.num_tokens.flatten().tolist())) > 1  # some beams stopped at EOS earlier than others
    new = out.sequences[:, inputs["input_ids"].shape[1] :]
    for row, text in enumerate(t for texts in got.texts for t in texts):
        n = int(lengths[row])
        assert int(new[row, n - 1]) in (EOS, ENDOFTEXT) or n == 12  # the EOS is counted, the padding is not
        assert text == processor.tokenizer.decode(new[row, :n], skip_special_tokens=True).strip()
        assert "<|im_end|>" not in text
        assert text == text.strip()


def test_default_length_penalty_divides_by_length(tiny) -> None:
    """HF's default length_penalty=1 gives sequences_scores = alpha / length; alpha itself is still the sum."""
    model, processor = tiny
    inputs = make_inputs(processor, [0, 1])
    out, scores = reference_generate(model, inputs, 3, 1.0)
    lengths = (out.beam_indices >= 0).sum(dim=1)
    np.testing.assert_allclose(out.sequences_scores.numpy(), (scores.sum(dim=1) / lengths).numpy(), atol=1e-5)
    got = generate_candidates(model, processor.tokenizer, inputs, num_beams=3, max_new_tokens=12, length_penalty=1.0)
    np.testing.assert_allclose(got.log_likelihood.flatten().numpy(), scores.sum(dim=1).double().numpy(), atol=1e-5)


def manual_greedy(model: torch.nn.Module, inputs: dict, steps: int) -> tuple[list[int], float]:
    """Greedy decoding of ONE unpadded prompt by full forwards (no cache), summing float64 log_softmax."""
    ids = inputs["input_ids"]
    tokens, total = [], 0.0
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), input_features=inputs["input_features"],
                feature_attention_mask=inputs["feature_attention_mask"], use_cache=False,
            ).logits[0, -1].double()  # fmt: skip
            logp = torch.log_softmax(logits, dim=-1)
            token = int(logits.argmax())
            tokens.append(token)
            total += float(logp[token])
            if token in (EOS, ENDOFTEXT):
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, total


@pytest.mark.parametrize(
    ("seed", "eos_prone", "lengths"),
    [
        pytest.param(0, True, None, id="eos-prone"),
        pytest.param(0, False, [12, 12], id="no-eos"),
        pytest.param(3, False, [11, 9], id="eos-at-different-steps"),  # row 1 is padded after its EOS
    ],
)
def test_greedy_alpha_equals_a_manual_forward(seed: int, eos_prone: bool, lengths: list[int] | None) -> None:
    model, processor = short_tiny(seed, eos_prone=eos_prone)
    got = generate_candidates(model, processor.tokenizer, make_inputs(processor, [0, 1]), max_new_tokens=12)
    assert got.log_likelihood.shape == (2, 1)
    for i in (0, 1):
        tokens, total = manual_greedy(model, make_inputs(processor, [i]), 12)
        assert int(got.num_tokens[i, 0]) == len(tokens)
        assert got.log_likelihood[i, 0].item() == pytest.approx(total, abs=1e-4)
        assert got.texts[i][0] == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    if lengths is not None:
        assert got.num_tokens[:, 0].tolist() == lengths


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_equals_one_by_one(tiny, beams: int) -> None:
    model, processor = tiny
    batched = generate_candidates(model, processor, make_inputs(processor, [0, 1]), num_beams=beams, max_new_tokens=10)
    for i in (0, 1):
        alone = generate_candidates(model, processor, make_inputs(processor, [i]), num_beams=beams, max_new_tokens=10)
        assert alone.texts[0] == batched.texts[i]
        assert alone.num_tokens[0].tolist() == batched.num_tokens[i].tolist()
        np.testing.assert_allclose(alone.log_likelihood[0].numpy(), batched.log_likelihood[i].numpy(), atol=1e-4)


def test_hub_generation_defaults_do_not_leak(tiny) -> None:
    """A hub generation_config.json (sampling, repetition penalty) must change neither tokens nor scores."""
    model, processor = tiny
    inputs = make_inputs(processor, [0, 1])
    clean = generate_candidates(model, processor.tokenizer, inputs, num_beams=2, max_new_tokens=8)
    hub = short_tiny()[0]
    hub.generation_config.update(
        do_sample=True, top_k=2, top_p=0.5, temperature=0.3, repetition_penalty=1.5, no_repeat_ngram_size=1
    )
    hub.train()
    dirty = generate_candidates(hub, processor.tokenizer, inputs, num_beams=2, max_new_tokens=8)
    assert hub.training  # the caller's mode is restored
    assert dirty.texts == clean.texts
    np.testing.assert_allclose(dirty.log_likelihood.numpy(), clean.log_likelihood.numpy(), atol=1e-6)


def test_right_padding_and_bad_arguments_are_errors(tiny) -> None:
    model, processor = tiny
    inputs = make_inputs(processor, [0, 1])
    right = dict(inputs)
    right["attention_mask"] = inputs["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="LEFT"):
        generate_candidates(model, processor.tokenizer, right)
    with pytest.raises(ValueError, match="positive"):
        generate_candidates(model, processor.tokenizer, inputs, num_beams=0)


def test_next_token_distribution_matches_a_manual_forward(tiny) -> None:
    model, processor = tiny
    ids = [EOS, 71, 12, 40]
    got = next_token_distribution(model, make_inputs(processor, [0, 1]), ids)
    assert got.dtype == torch.float64
    assert got.shape == (2, 4)
    for i in (0, 1):
        single = make_inputs(processor, [i])  # no padding at all
        with torch.inference_mode():
            logits = model(**single, use_cache=False).logits[0, -1].double().numpy()
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        expected = probs[ids] / probs[ids].sum()
        np.testing.assert_allclose(got[i].numpy(), expected, atol=1e-6)
        # the first greedy token's log-probability is the full-vocabulary softmax at the argmax
        first = generate_candidates(model, processor.tokenizer, single, max_new_tokens=1)
        assert first.log_likelihood[0, 0].item() == pytest.approx(np.log(probs.max()), abs=1e-5)
    with pytest.raises(ValueError, match="empty"):
        next_token_distribution(model, make_inputs(processor, [0]), [])


def _teacher_forced(model, single: dict[str, torch.Tensor], seq: tuple[int, ...], temperature: float) -> float:
    """log P(seq) after one unpadded prompt: ONE plain forward of prompt + seq (no cache), per-token softmax(z / T)."""
    ids = torch.cat([single["input_ids"], torch.tensor([seq])], dim=1)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, input_features=single["input_features"],
                       feature_attention_mask=single["feature_attention_mask"], use_cache=False).logits[0]  # fmt: skip
    start = single["input_ids"].shape[1] - 1
    logp = torch.log_softmax(logits[start : start + len(seq)].double() / temperature, dim=-1)
    return float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum())


def test_continuation_log_likelihoods_match_plain_forwards_of_each_sequence(tiny) -> None:
    model, processor = tiny
    # one-token, a sequence another extends (fed once, shared), a longer one, one whose prefix is fed by nothing else
    seqs = [(71,), (71, 12), (71, 12, 40), (40, 12), (12, 12, 71, 66)]
    temperatures = [0.6, 1.0]
    got = continuation_log_likelihoods(model, make_inputs(processor, [0, 1]), seqs, temperatures)
    assert got.dtype == torch.float64
    assert got.shape == (2, len(seqs))
    for i in (0, 1):
        single = make_inputs(processor, [i])
        expected = [_teacher_forced(model, single, s, temperatures[i]) for s in seqs]
        np.testing.assert_allclose(got[i].numpy(), expected, atol=1e-5)
    assert got[0, 2] < got[0, 1] < got[0, 0]  # each extra token only lowers the probability
    with pytest.raises(ValueError, match="non-empty"):
        continuation_log_likelihoods(model, make_inputs(processor, [0]), [(71,), ()], [1.0])
    with pytest.raises(ValueError, match="positive temperature"):
        continuation_log_likelihoods(model, make_inputs(processor, [0]), [(71,)], [0.0])

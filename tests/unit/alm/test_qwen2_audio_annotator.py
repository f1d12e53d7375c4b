"""The local Qwen2-Audio annotator on tiny random models: loading, sampling, exact mode, batching, seeding.

Exact mode is checked against plain forwards of prompt + class-name tokens, one per written form (no cache).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from qwen2_fixtures import RATE, tiny_qwen2_audio_dir, tiny_qwen2_audio_processor, tone  # noqa: F401 (fixture)
from scipy import stats
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2AudioProcessor, WhisperFeatureExtractor

from ser_lightning.alm.annotator import AnnotationRequest, AnnotatorBackend, make_backend
from ser_lightning.alm.prompts import clip_at_rate
from ser_lightning.alm.qwen2_audio_annotator import (
    Qwen2AudioAnnotator,
    SeededSampler,
    class_answer_sequences,
    class_first_tokens,
    request_seed,
)
from ser_lightning.nn.qwen2_audio.offline import (
    TINY_QWEN2_AUDIO_CONFIG,
    UNK,
    offline_vocabulary,
    qwen_tokenizer,
    random_qwen2_audio,
)

# Single tokens of the offline word-level vocabulary (its normaliser lowercases).
CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
pytestmark = pytest.mark.timeout(120)


def short_tiny(seed: int = 0, tokenizer: Any = None) -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    """The tiny model with a 1 s encoder window (100 mel frames) and a matching extractor: fast on CPU."""
    audio = {**TINY_QWEN2_AUDIO_CONFIG["audio_config"], "max_source_positions": 50}
    model = random_qwen2_audio({**TINY_QWEN2_AUDIO_CONFIG, "audio_config": audio}, seed=seed)
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE, chunk_length=1)
    tokenizer = tokenizer or tiny_qwen2_audio_processor().tokenizer
    return model, Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def subword_tokenizer() -> PreTrainedTokenizerFast:
    """A cased WordPiece tokenizer on the offline vocabulary that splits class names: "Anger" is "Ang" "##er".

    "anger" stays one token (a case variant with other tokens), "**" is a token (the markdown-bold form), and
    "Sadness" / "sadness" are "Sad" / "sad" + "##ness"; the special tokens keep the ids the tiny config expects.
    """
    base = offline_vocabulary(TINY_QWEN2_AUDIO_CONFIG["text_config"]["vocab_size"])
    vocab = {t: i for t, i in base.items() if t not in ("anger", "sadness")}
    free = [base["anger"], base["sadness"], *range(len(base), len(base) + 6)]
    vocab.update(zip(["Ang", "##er", "anger", "**", "Sad", "##ness", "Happiness", "Neutral"], free, strict=True))
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    return qwen_tokenizer(backend)


@pytest.fixture(scope="module")
def short_model() -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    return short_tiny()


def req(
    uid: str, k: int = 0, seconds: float = 0.8, temperature: float = 1.0, persona: int = 0, text: str = "i am so happy"
) -> AnnotationRequest:
    """A request on a tone whose pitch depends on the uid."""
    return AnnotationRequest(uid, k, tone(seconds, 180 + 40 * len(uid)), RATE, text, CLASSES, persona, temperature)


MIXED = [
    req("a", seconds=0.3, temperature=0.2, persona=0),
    req("bb", seconds=0.9, temperature=1.0, persona=3, text="leave me alone"),
    req("ccc", k=4, seconds=0.6, temperature=0.55, persona=4, text=""),
    req("dddd", k=2, seconds=0.45, temperature=0.9, persona=1),
]


def test_loads_a_checkpoint_directory(tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811 (fixture)
    backend = make_backend("qwen2-audio", str(tiny_qwen2_audio_dir), batch_size=2, max_new_tokens=3, device="cpu")
    assert isinstance(backend, Qwen2AudioAnnotator)
    assert isinstance(backend, AnnotatorBackend)
    assert (backend.name, backend.model, backend.mode, backend.max_batch) == (
        "qwen2-audio", str(tiny_qwen2_audio_dir), "sample", 2,
    )  # fmt: skip
    answers = backend.annotate([req("a", seconds=1.0), req("bb", seconds=2.0, temperature=0.3)])
    assert len(answers) == 2
    for answer in answers:
        assert answer.probabilities is None
        assert isinstance(answer.raw, str)
        assert (answer.label is None) == (answer.reason is not None)
    assert backend.stats["requests"] == 2
    assert backend.stats["tokens"] > 2 * 100


def test_exact_mode_matches_sampled_first_token_frequencies() -> None:
    model, processor = short_tiny(seed=1)
    exact = Qwen2AudioAnnotator("tiny", "exact", batch_size=100, model_and_processor=(model, processor))
    probe = req("x", temperature=0.8, persona=2)
    # Give the class tokens known logits on this input (and every other token 0): an independent reference.
    with torch.no_grad():
        hidden = model(**exact._inputs([probe]), output_hidden_states=True).hidden_states[-1][0, -1]
        ids = class_first_tokens(processor.tokenizer, CLASSES)
        target = torch.tensor([7.0, 6.2, 5.5, 4.0])
        model.lm_head.weight.zero_()
        model.lm_head.weight[ids] = target[:, None] * hidden[None] / hidden.dot(hidden)
    reference = np.exp(target.numpy() / 0.8) / np.exp(target.numpy() / 0.8).sum()
    [answer] = exact.annotate([probe])
    np.testing.assert_allclose(answer.probabilities, reference, atol=1e-4)
    assert answer.label == "Anger"
    assert answer.raw == "Anger"
    assert answer.reason is None

    sampler = Qwen2AudioAnnotator(
        "tiny", "sample", batch_size=100, max_new_tokens=1, seed=3, model_and_processor=(model, processor)
    )
    n = 600
    answers = sampler.annotate([req("x", k=k, temperature=0.8, persona=2) for k in range(n)])
    counts = Counter(a.label for a in answers)
    # Invalid first tokens: the 124 other tokens (logit 0) against the four class tokens, within 4 sigma.
    weights = np.exp(target.numpy() / 0.8)
    p_invalid = 124 / (124 + weights.sum())
    assert abs(counts[None] - n * p_invalid) <= 4 * np.sqrt(n * p_invalid * (1 - p_invalid)) + 1
    observed = np.array([counts[c] for c in CLASSES])
    expected = observed.sum() * np.asarray(answer.probabilities)
    merged_obs = np.append(observed[:2], observed[2:].sum())  # expected counts >= 5 per cell
    merged_exp = np.append(expected[:2], expected[2:].sum())
    assert stats.chisquare(merged_obs, merged_exp).pvalue > 1e-3
    uniform = np.full(3, observed.sum() / 3)
    assert stats.chisquare(merged_obs, uniform).pvalue < 1e-6  # the test can tell distributions apart


@pytest.mark.parametrize("mode", ["sample", "exact"])
def test_batching_gives_the_same_answers(short_model: tuple, mode: str) -> None:
    batched = Qwen2AudioAnnotator("tiny", mode, batch_size=4, max_new_tokens=4, model_and_processor=short_model)
    single = Qwen2AudioAnnotator("tiny", mode, batch_size=1, max_new_tokens=4, model_and_processor=short_model)
    together, alone = batched.annotate(MIXED), single.annotate(MIXED)
    assert [a.raw for a in together] == [a.raw for a in alone]
    assert [a.label for a in together] == [a.label for a in alone]
    if mode == "exact":
        np.testing.assert_allclose([a.probabilities for a in together], [a.probabilities for a in alone], atol=1e-5)
    else:
        assert all(a.raw for a in together)


def test_sampling_is_seeded_per_request(short_model: tuple) -> None:
    def raws(seed: int, requests: list[AnnotationRequest]) -> list[str]:
        backend = Qwen2AudioAnnotator("tiny", "sample", seed=seed, max_new_tokens=4, model_and_processor=short_model)
        return [a.raw for a in backend.annotate(requests)]

    requests = [req("a", k=k) for k in range(6)]
    first = raws(0, requests)
    assert raws(0, requests[::-1]) == first[::-1]  # a re-run, in any order, asks and answers the same
    assert raws(1, requests) != first  # another run seed: other draws
    assert len(set(first)) > 1  # another k: other draws


def test_exact_temperature_scales_log_odds(short_model: tuple) -> None:
    backend = Qwen2AudioAnnotator("tiny", "exact", model_and_processor=short_model)
    cold, hot = backend.annotate([req("a", temperature=0.25), req("a", temperature=1.0)])
    log_cold, log_hot = np.log(cold.probabilities), np.log(hot.probabilities)
    # log p_i - log p_j = (z_i - z_j) / T
    np.testing.assert_allclose((log_cold - log_cold[0]) * 0.25, (log_hot - log_hot[0]) * 1.0, atol=1e-6)
    assert sum(cold.probabilities) == pytest.approx(1.0)
    assert cold.label == CLASSES[int(np.argmax(hot.probabilities))]


def test_class_first_tokens_must_differ() -> None:
    tokenizer = tiny_qwen2_audio_processor().tokenizer
    assert len(set(class_first_tokens(tokenizer, CLASSES))) == 4  # still the zero-shot model's exact strategy
    with pytest.raises(ValueError, match="first tokens differ"):
        class_first_tokens(tokenizer, ("Anger", "anger management", "Sadness"))
    with pytest.raises(ValueError, match="unknown token"):
        class_first_tokens(tokenizer, ("Joy", "Sadness"))


def test_class_answer_sequences_drop_unknown_forms_and_refuse_answers_that_start_another_class() -> None:
    tokenizer = tiny_qwen2_audio_processor().tokenizer  # word level, lowercasing: every form is one token
    forms = class_answer_sequences(tokenizer, CLASSES)
    assert forms == [[(i,)] for i in class_first_tokens(tokenizer, CLASSES)]  # "**" is unknown: no bold form
    assert class_answer_sequences(tokenizer, ("Sad", "Sadness")) == [
        [(tokenizer.convert_tokens_to_ids("sad"),)],
        [(tokenizer.convert_tokens_to_ids("sadness"),)],
    ]
    with pytest.raises(ValueError, match="answers differ: 'anger' \\(Anger\\) starts 'anger happiness'"):
        class_answer_sequences(tokenizer, ("Anger", "anger happiness", "Sadness"))
    with pytest.raises(ValueError, match="unknown token"):
        class_answer_sequences(tokenizer, ("Joy", "Sadness"))


def test_exact_mode_refuses_colliding_classes_before_any_forward(short_model: tuple) -> None:
    backend = Qwen2AudioAnnotator("tiny", "exact", model_and_processor=short_model)
    bad = AnnotationRequest("u", 0, tone(0.5), RATE, "hi", ("Anger", "anger happiness"), 0, 1.0)
    with pytest.raises(ValueError, match="answers differ"):
        backend.annotate([bad])
    assert backend.stats["requests"] == 0


def _teacher_forced(model: torch.nn.Module, single: dict, seq: tuple[int, ...], temperature: float) -> float:
    """log P(seq) after one unpadded prompt: one plain forward of prompt + seq (no cache), per-token softmax(z / T)."""
    ids = torch.cat([single["input_ids"], torch.tensor([seq])], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=single["input_features"],
                       feature_attention_mask=single["feature_attention_mask"], use_cache=False).logits[0]  # fmt: skip
    start = single["input_ids"].shape[1] - 1
    logp = torch.log_softmax(logits[start : start + len(seq)].double() / temperature, dim=-1)
    return float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum())


def _reference(backend: Qwen2AudioAnnotator, request: AnnotationRequest, forms: list[list[str]]) -> np.ndarray:
    """Class probabilities from the written forms (token strings) given here: log-sum-exp per class, normalised."""
    single = backend._inputs([request])
    tokenizer = backend.processor.tokenizer
    totals = []
    for class_forms in forms:
        lls = [_teacher_forced(backend.net, single, tuple(tokenizer.convert_tokens_to_ids(f)), request.temperature)
               for f in class_forms]  # fmt: skip
        totals.append(np.logaddexp.reduce(lls))
    p = np.exp(np.array(totals) - max(totals))
    return p / p.sum()


# The written forms of CLASSES under subword_tokenizer(): cased, lowercase and bold ("Anger" == " Anger" in tokens)
SUBWORD_FORMS = [
    [["Ang", "##er"], ["anger"], ["**", "Ang", "##er", "**"]],
    [["Happiness"], ["happiness"], ["**", "Happiness", "**"]],
    [["Neutral"], ["neutral"], ["**", "Neutral", "**"]],
    [["Sad", "##ness"], ["sad", "##ness"], ["**", "Sad", "##ness", "**"]],
]


@pytest.fixture
def subword_model() -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    return short_tiny(seed=2, tokenizer=subword_tokenizer())


def test_exact_mode_scores_every_token_of_every_written_form(subword_model: tuple) -> None:
    backend = Qwen2AudioAnnotator("tiny", "exact", batch_size=4, model_and_processor=subword_model)
    tokenizer = backend.processor.tokenizer
    expected = [[tuple(tokenizer.convert_tokens_to_ids(f)) for f in forms] for forms in SUBWORD_FORMS]
    assert class_answer_sequences(tokenizer, CLASSES) == expected
    answers = backend.annotate(MIXED)
    for request, answer in zip(MIXED, answers, strict=True):
        assert sum(answer.probabilities) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(answer.probabilities, _reference(backend, request, SUBWORD_FORMS), atol=1e-6)
        assert answer.label == CLASSES[int(np.argmax(answer.probabilities))]


def test_a_first_token_alone_is_no_class_and_case_variants_count(subword_model: tuple) -> None:
    model, processor = subword_model
    backend = Qwen2AudioAnnotator("tiny", "exact", model_and_processor=subword_model)
    probe = req("x", temperature=1.0)
    single = backend._inputs([probe])
    ang, er, lower = processor.tokenizer.convert_tokens_to_ids(["Ang", "##er", "anger"])
    with torch.no_grad():
        h0 = model(**single, output_hidden_states=True).hidden_states[-1][0, -1]  # where the answer starts
        ids = torch.cat([single["input_ids"], torch.tensor([[ang]])], dim=1)
        h1 = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=single["input_features"],
                   feature_attention_mask=single["feature_attention_mask"],
                   output_hidden_states=True).hidden_states[-1][0, -1]  # after "Ang"  # fmt: skip
        model.lm_head.weight[ang] = 10.0 * h0 / h0.dot(h0)  # "Ang" almost surely starts the answer ...
        model.lm_head.weight[er] = -10.0 * h1 / h1.dot(h1)  # ... but "##er" almost never follows it
        logits = model(**single).logits[0, -1]
    firsts = logits[class_first_tokens(processor.tokenizer, CLASSES)].softmax(-1)
    assert firsts[0] > 0.99  # the old first-token reading: "Anger"
    [answer] = backend.annotate([probe])
    np.testing.assert_allclose(answer.probabilities, _reference(backend, probe, SUBWORD_FORMS), atol=1e-6)
    assert answer.probabilities[0] < 0.5
    assert answer.label != "Anger"
    with torch.no_grad():
        model.lm_head.weight[lower] = 12.0 * h0 / h0.dot(h0)  # now the lowercase form "anger" is the likely answer
    [answer] = backend.annotate([probe])
    np.testing.assert_allclose(answer.probabilities, _reference(backend, probe, SUBWORD_FORMS), atol=1e-6)
    assert answer.label == "Anger"
    assert answer.probabilities[0] > 0.9


def test_requests_with_other_class_sets_in_one_batch(short_model: tuple) -> None:
    other = AnnotationRequest("e", 1, tone(0.7, 260), RATE, "hi", ("Sadness", "Anger"), 2, 0.5)
    requests = [MIXED[0], other, MIXED[1]]
    together = Qwen2AudioAnnotator("tiny", "exact", batch_size=3, model_and_processor=short_model).annotate(requests)
    alone = Qwen2AudioAnnotator("tiny", "exact", batch_size=1, model_and_processor=short_model).annotate(requests)
    assert [len(a.probabilities) for a in together] == [4, 2, 4]
    np.testing.assert_allclose(
        [p for a in together for p in a.probabilities], [p for a in alone for p in a.probabilities], atol=1e-6
    )
    assert together[1].label in ("Sadness", "Anger")


def test_seeded_sampler_frequencies() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    draws = []
    for seed in range(4000):
        sampler = SeededSampler([0.7, 0.0], [request_seed(0, "u", seed), 1])
        out = sampler(torch.zeros(2, 1, dtype=torch.long), logits)
        assert out[1].argmax() == 1
        assert torch.isinf(out[1]).sum() == 3
        draws.append(int(out[0].argmax()))
    reference = np.exp(np.array([2.0, 1.0, 0.0, -1.0]) / 0.7)
    reference /= reference.sum()
    observed = np.bincount(draws, minlength=4)
    assert stats.chisquare(observed, 4000 * reference).pvalue > 1e-3


def test_request_seed_is_stable() -> None:
    assert request_seed(0, "u", 1) == request_seed(0, "u", 1)
    assert len({request_seed(s, u, k) for s in (0, 1) for u in ("u", "v") for k in (0, 1)}) == 8
    assert 0 <= request_seed(7, "x", 3) < 2**63


def test_resamples_other_rates(short_model: tuple) -> None:
    backend = Qwen2AudioAnnotator("tiny", "exact", model_and_processor=short_model)
    at_8k = AnnotationRequest("u", 0, tone(0.5, rate=8000), 8000, "hi", CLASSES, 0, 1.0)
    assert clip_at_rate(at_8k.audio, at_8k.sample_rate, backend.sampling_rate).shape == (RATE // 2,)
    assert backend.annotate([at_8k])[0].label in CLASSES

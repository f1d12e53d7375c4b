"""Batched candidate generation with cumulative log-likelihoods, and the exact next-token distribution.

:func:`generate_candidates` decodes a batch of utterances (left padded) greedily or with beam search in ONE
``generate`` call and returns every candidate's text with alpha_b, the sum of its generated tokens'
log-probabilities (paper Sec. 4.2.2: best-of-N keeps the beam with the "highest cumulative log probabilities";
Eq. 3 weights the beams by a softmax over the alpha_b). :func:`next_token_distribution` reads the next token's
probabilities over a few token ids from one forward, without generating (the issue's ``exact`` strategy).
:func:`continuation_log_likelihoods` scores whole token sequences as the answer's start, teacher-forced on the
prompts' key-value cache (the annotator's ``exact`` mode: every token of a class name counts, not only its first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Candidates",
    "continuation_log_likelihoods",
    "generate_candidates",
    "generation_config",
    "next_token_distribution",
    "on_model",
]


@dataclass
class Candidates:
    """B decoded candidates per utterance with their cumulative log-likelihoods, best first for beams."""

    texts: list[list[str]]  # N utterances x B candidates, decoded (skip_special_tokens), stripped
    log_likelihood: Tensor  # (N, B) float64 alpha_b: SUM of the generated tokens' log-probabilities
    num_tokens: Tensor  # (N, B) generated tokens per candidate (up to and incl. EOS, no padding)


def _tokenizer(tokenizer: Any) -> Any:
    """The tokenizer itself when a processor is given (``processor.tokenizer``)."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def eos_token_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and ``<|endoftext|>`` (Qwen's chat turns end with ``<|im_end|>``), deduplicated."""
    tokenizer = _tokenizer(tokenizer)
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return list(dict.fromkeys(int(t) for t in ids if t is not None and t != unk))


def generation_config(tokenizer: Any, max_new_tokens: int, **extra: Any) -> Any:
    """A fresh deterministic GenerationConfig that no hub ``generation_config.json`` default can alter.

    ``generate`` fills every field left ``None`` from the model's own generation config (transformers 5.x
    ``_prepare_generation_config``): the logits processors that act without sampling (repetition penalty, n-gram
    bans, minimum length) are therefore set to their neutral values explicitly, so scores are the model's.
    """
    from transformers import GenerationConfig

    eos = eos_token_ids(tokenizer)
    if not eos:
        raise ValueError("the tokenizer has no EOS token: generation could not stop")
    pad = _tokenizer(tokenizer).pad_token_id
    neutral = {
        "do_sample": False,
        "temperature": 1.0,  # the sampling warpers (top-k/p, temperature) act only with do_sample=True
        "repetition_penalty": 1.0,
        "encoder_repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "encoder_no_repeat_ngram_size": 0,
        "min_length": 0,
        "early_stopping": False,
        "renormalize_logits": False,
    }
    return GenerationConfig(
        **{**neutral, **extra},
        max_new_tokens=int(max_new_tokens),
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos[0],
    )


def on_model(inputs: Mapping[str, Tensor], model: Any) -> dict[str, Tensor]:
    """Processor inputs on the model's device; floating-point ones (mel features) in its dtype too."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    return {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


def _left_padded(inputs: Mapping[str, Tensor]) -> None:
    """An error when the prompts are right padded (generation would continue after the padding)."""
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape[0] > 0 and not bool(mask[:, -1].all()):
        raise ValueError("generation needs LEFT padded inputs (processor(..., padding_side='left'))")


def generate_candidates(
    model: Any,
    tokenizer: Any,
    inputs: Mapping[str, Tensor],
    *,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    length_penalty: float = 0.0,
) -> Candidates:
    """All utterances' candidates from one ``generate`` call: greedy (``num_beams=1``) or the B beams, best first.

    ``inputs`` are left padded (``input_ids``, ``attention_mask``, ``input_features``, ``feature_attention_mask``,
    on the model's device). alpha_b sums ``compute_transition_scores`` over the generated tokens up to and including
    the first EOS. ``length_penalty`` only ranks the beams: 0 ranks finished beams by alpha_b itself.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be positive, got {num_beams}, {max_new_tokens}")
    _left_padded(inputs)
    tokenizer = _tokenizer(tokenizer)
    beams = num_beams > 1
    extra: dict[str, Any] = {"output_scores": True, "return_dict_in_generate": True}
    if beams:
        # transformers 5.24 GenerationMixin._update_finished_beams scores a finished beam as
        # sum_logprobs / generated_len ** length_penalty: 0.0 ranks the finished beams (and gives sequences_scores)
        # by the cumulative log-probability of Sec. 4.2.2; HF's default 1.0 ranks by the per-token mean instead.
        extra |= {"num_beams": num_beams, "num_return_sequences": num_beams, "length_penalty": float(length_penalty)}
    config = generation_config(tokenizer, max_new_tokens, **extra)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, generation_config=config)
            # Greedy scores are the (processed) logits: normalise them; beam scores are already log_softmax'ed
            # (GenerationMixin._beam_search), normalising again would be a no-op at best.
            scores = model.compute_transition_scores(
                out.sequences, out.scores, out.beam_indices if beams else None, normalize_logits=not beams
            )
    finally:
        model.train(was_training)
    generated = out.sequences[:, inputs["input_ids"].shape[1] :]
    steps = scores.shape[1]
    if generated.shape[1] < steps:
        raise RuntimeError(f"generate returned {generated.shape[1]} new tokens but {steps} transition scores")
    generated = generated[:, :steps]
    eos = torch.tensor(config.eos_token_id, device=generated.device)
    is_eos = torch.isin(generated, eos)
    positions = torch.arange(steps, device=generated.device)
    first_eos = torch.where(is_eos, positions, steps).min(dim=1).values  # `steps` when a candidate never ended
    valid = positions[None, :] <= first_eos[:, None]  # up to and including EOS; padding after it is dropped
    alpha = (scores.double() * valid).sum(dim=1)
    counts = valid.sum(dim=1)
    rows = generated.shape[0]
    texts = [tokenizer.decode(generated[r, : int(counts[r])], skip_special_tokens=True).strip() for r in range(rows)]
    n = rows // num_beams
    return Candidates(
        texts=[texts[i * num_beams : (i + 1) * num_beams] for i in range(n)],
        log_likelihood=alpha.reshape(n, num_beams).cpu(),
        num_tokens=counts.reshape(n, num_beams).cpu(),
    )


def next_token_distribution(model: Any, inputs: Mapping[str, Tensor], token_ids: Sequence[int]) -> Tensor:
    """``(N, len(token_ids))`` float64: the next token's probabilities over ``token_ids``, renormalised.

    One forward of the left-padded prompts (positions counted from each prompt's first real token, as ``generate``
    does); softmax over the whole vocabulary in float64 at the last position, then restricted to ``token_ids``.
    """
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("token_ids is empty")
    _left_padded(inputs)
    kwargs = dict(inputs)
    mask = kwargs.get("attention_mask")
    if mask is not None and "position_ids" not in kwargs:
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(**kwargs, use_cache=False).logits[:, -1, :]
    finally:
        model.train(was_training)
    probs = torch.softmax(logits.double(), dim=-1)[:, ids]
    return (probs / probs.sum(dim=-1, keepdim=True)).cpu()


def _prompt_positions(inputs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """The model's keyword inputs with position ids counted from each left-padded prompt's first real token."""
    kwargs = dict(inputs)
    mask = kwargs["attention_mask"]
    if "position_ids" not in kwargs:
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return kwargs, mask


def _forwards(sequences: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The continuations to feed: each multi-token sequence but its last token, less those another one extends."""
    needed = {tuple(s[:-1]) for s in sequences if len(s) > 1}
    return sorted(p for p in needed if not any(len(q) > len(p) and q[: len(p)] == p for q in needed))


def continuation_log_likelihoods(
    model: Any, inputs: Mapping[str, Tensor], sequences: Sequence[Sequence[int]], temperatures: Sequence[float]
) -> Tensor:
    """``(N, M)`` float64: log P(the answer starts with ``sequences[j]``) per left-padded prompt, summed over tokens.

    Each token's probability is ``softmax(logits / T_row)`` (the distribution sampling at that temperature draws
    from). One forward of the prompts keeps their key-value cache; each distinct continuation (a sequence minus its
    last token, unless a longer one contains it) is then one short batched forward on that cache, cropped after.
    Single-token sequences need only the prompt forward.
    """
    seqs = [tuple(int(t) for t in s) for s in sequences]
    if not seqs or any(not s for s in seqs):
        raise ValueError("sequences must be non-empty token sequences")
    temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float64)
    if temps.numel() != inputs["input_ids"].shape[0] or bool((temps <= 0).any()):
        raise ValueError(f"need one positive temperature per prompt, got {list(temperatures)}")
    _left_padded(inputs)
    kwargs, mask = _prompt_positions(inputs)
    feeds = _forwards(seqs)
    owner = {j: next(i for i, f in enumerate(feeds) if f[: len(s) - 1] == s[:-1]) for j, s in enumerate(seqs)
             if len(s) > 1}  # fmt: skip
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            out = model(**kwargs, use_cache=True)
            temps = temps.to(out.logits.device)
            first = torch.log_softmax(out.logits[:, -1].double() / temps[:, None], dim=-1)
            scores = torch.stack([first[:, s[0]] for s in seqs], dim=1)
            cache = getattr(out, "cache", None)
            cache = getattr(out, "past_key_values", None) if cache is None else cache
            for i, feed in enumerate(feeds):
                logp = _continuation_log_probs(model, cache, mask, feed, temps)
                for j, s in enumerate(seqs):
                    if owner.get(j) == i:
                        steps = torch.arange(len(s) - 1, device=logp.device)
                        scores[:, j] += logp[:, steps, torch.tensor(s[1:], device=logp.device)].sum(-1)
    finally:
        model.train(was_training)
    return scores.cpu()


def _continuation_log_probs(model: Any, cache: Any, mask: Tensor, feed: tuple[int, ...], temps: Tensor) -> Tensor:
    """``(N, len(feed), V)`` next-token log-probabilities after each token of ``feed`` (the cache is left as it was)."""
    rows, steps = mask.shape[0], len(feed)
    before = None if cache is None else cache.get_seq_length()
    ids = torch.tensor(feed, dtype=torch.long, device=mask.device).expand(rows, steps)
    full_mask = torch.cat([mask, torch.ones(rows, steps, dtype=mask.dtype, device=mask.device)], dim=1)
    positions = mask.long().sum(-1, keepdim=True) + torch.arange(steps, device=mask.device)
    logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True).logits
    if before != mask.shape[1] or cache.get_seq_length() != before + steps:
        raise RuntimeError("the model did not extend the prompts' key-value cache: continuation scores would be wrong")
    cache.crop(-steps)
    return torch.log_softmax(logits.double() / temps[:, None, None], dim=-1)

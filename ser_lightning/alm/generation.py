"""Batched candidate generation with cumulative log-likelihoods, and the exact next-token distribution.

:func:`generate_candidates` decodes a batch of utterances (left padded) greedily or with beam search in ONE
``generate`` call and returns every candidate's text with alpha_b, the sum of its generated tokens'
log-probabilities (paper Sec. 4.2.2: best-of-N keeps the beam with the "highest cumulative log probabilities";
Eq. 3 weights the beams by a softmax over the alpha_b). :func:`next_token_distribution` reads the next token's
probabilities over a few token ids from one forward, without generating (the issue's ``exact`` strategy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Candidates", "generate_candidates", "generation_config", "next_token_distribution", "on_model"]


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

"""The local annotator: Qwen2-Audio answering Table 1's prompt, batched, sampled or read exactly from one forward.

``mode="sample"`` asks like the API does: Table 1's prompt and the clip through the chat template, a few tokens
sampled from ``softmax(logits / T)`` (pure temperature sampling: no top-k / top-p / repetition penalty from the hub's
generation config), the text parsed. ``mode="exact"`` (beyond the paper) reads the distribution those samples
estimate: for each class, the probability that the answer starts with one of its written forms
(:data:`ANSWER_FORMS`: cased, lowercase, capitalised, after a space, markdown bold), every token of the form
teacher-forced at ``softmax(logits / T)``; the forms' probabilities add up (log-sum-exp) to the class's, and the
classes' are renormalised to sum to 1, label = the argmax. A prefix such as "Ang" is no class: "Anger" counts only
with all its tokens.

Sampling is seeded per request from ``(seed, uid, k)``, one generator per row: a re-run asks the same question and
gets the same answer, and an answer does not depend on the batch it was in (up to float rounding of the logits,
which can flip a draw that falls on a boundary between two tokens; best effort, not a guarantee across devices).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from ser_lightning.alm.annotator import AnnotationAnswer, AnnotationRequest, request_seed
from ser_lightning.alm.generation import continuation_log_likelihoods, on_model
from ser_lightning.alm.parsing import parse_label
from ser_lightning.alm.prompts import annotation_conversation, chat_inputs, clip_at_rate

__all__ = [
    "ANSWER_FORMS",
    "Qwen2AudioAnnotator",
    "SeededSampler",
    "class_answer_sequences",
    "class_first_tokens",
    "request_seed",
]

# How an answer may write a class name (exact mode): {name} as the card spells it, {lower} and {title} cased so.
ANSWER_FORMS = ("{name}", "{lower}", "{title}", " {name}", " {lower}", " {title}", "**{name}**", "**{title}**")


def class_first_tokens(tokenizer: Any, classes: Sequence[str]) -> list[int]:
    """Each class name's first token id as the answer would start (no leading space); an error unless distinct."""
    ids = []
    for name in classes:
        tokens = tokenizer(name, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"class name {name!r} tokenises to nothing")
        ids.append(int(tokens[0]))
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        bad = [c for c, i in zip(classes, ids, strict=True) if i == unk]
        raise ValueError(f"exact mode: class names {bad} start with the unknown token; the vocabulary lacks them")
    if len(set(ids)) != len(ids):
        tokens = {c: tokenizer.convert_ids_to_tokens(i) for c, i in zip(classes, ids, strict=True)}
        raise ValueError(
            f"exact mode needs class names whose first tokens differ, got {tokens}; rename the classes "
            "(e.g. in the shards' card) or use mode='sample'"
        )
    return ids


def class_answer_sequences(tokenizer: Any, classes: Sequence[str]) -> list[list[tuple[int, ...]]]:
    """Per class, the distinct token sequences of its :data:`ANSWER_FORMS`, for exact mode's sequence scores.

    Forms with the unknown token are dropped, and so is a form that another form of its class starts (its
    probability is already in the shorter one's). Refused: a class with no form left, and a form of one class
    that starts a form of another (an answer could not be told apart).
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[list[tuple[int, ...]]] = []
    for name in classes:
        texts = dict.fromkeys(f.format(name=name, lower=name.lower(), title=name.capitalize()) for f in ANSWER_FORMS)
        seqs = list(dict.fromkeys(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
        seqs = [s for s in seqs if s and (unk is None or unk not in s)]
        out.append([s for s in seqs if not any(len(o) < len(s) and s[: len(o)] == o for o in seqs)])
    bad = [c for c, seqs in zip(classes, out, strict=True) if not seqs]
    if bad:
        raise ValueError(
            f"exact mode: class names {bad} tokenise only with the unknown token; the vocabulary lacks them"
        )
    for i, j in itertools.permutations(range(len(classes)), 2):
        for a, b in itertools.product(out[i], out[j]):
            if b[: len(a)] == a:
                raise ValueError(
                    f"exact mode needs class names whose answers differ: {tokenizer.decode(a)!r} ({classes[i]}) "
                    f"starts {tokenizer.decode(b)!r} ({classes[j]}); rename the classes or use mode='sample'"
                )
    return out


class SeededSampler(LogitsProcessor):
    """A logits processor that samples each row from ``softmax(scores / T_row)`` with the row's own generator.

    It returns ``-inf`` everywhere but the drawn token, so greedy ``generate`` emits exactly the draw: per-row
    seeds and temperatures, which ``generate(do_sample=True)`` (one global RNG, one temperature) cannot give.
    """

    def __init__(self, temperatures: Sequence[float], seeds: Sequence[int]) -> None:
        self.temperatures = [float(t) for t in temperatures]
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """The processed scores of one generation step (``scores``: ``(B, V)``)."""
        logits = scores.detach().float().cpu()
        out = torch.full_like(scores, float("-inf"))
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators, strict=True)):
            if temperature <= 0:
                token = int(logits[row].argmax())
            else:
                probs = torch.softmax(logits[row] / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            out[row, token] = 0.0
        return out


class Qwen2AudioAnnotator:
    """Qwen2-Audio as an annotator (``make_backend("qwen2-audio", backbone, mode)``), batched.

    Args:
        model: the backbone, a hub id (``Qwen/Qwen2-Audio-7B-Instruct``) or a local directory (offline).
        mode: ``"sample"`` (generated text, parsed) or ``"exact"`` (class probabilities of whole class names).
        seed: run seed; each request draws from ``(seed, uid, k)``.
        max_new_tokens: answer length in sample mode (a class name is a few tokens).
        batch_size: requests per forward (``max_batch``).
        device: ``"cuda"`` when available, else ``"cpu"``.
        dtype: weights' dtype (default bf16 on CUDA, fp32 on CPU).
        model_and_processor: an already loaded ``(model, processor)`` instead of loading ``model``.
    """

    name = "qwen2-audio"

    def __init__(
        self,
        model: str | Path,
        mode: str = "sample",
        *,
        seed: int = 0,
        max_new_tokens: int = 8,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        model_and_processor: tuple[Any, Any] | None = None,
    ) -> None:
        if mode not in ("sample", "exact"):
            raise ValueError(f"mode must be 'sample' or 'exact', got {mode!r}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size}, {max_new_tokens}")
        self.model = str(model)
        self.mode = mode
        self.seed = int(seed)
        self.max_new_tokens = int(max_new_tokens)
        self.max_batch = int(batch_size)
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "failures": 0, "tokens": 0}
        self._lock = threading.Lock()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model_and_processor is None:
            from ser_lightning.nn.qwen2_audio import load_qwen2_audio

            dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
            device_map = None if str(device) == "cpu" else {"": device}
            model_and_processor = load_qwen2_audio(model, dtype=dtype, device_map=device_map)
        self.net, self.processor = model_and_processor
        self.net.eval()
        self.device = torch.device(device)
        if str(device) == "cpu" or next(self.net.parameters()).device.type == "cpu":
            self.net.to(self.device)
        self.sampling_rate = int(self.processor.feature_extractor.sampling_rate)
        self._sequences: dict[tuple[str, ...], list[list[tuple[int, ...]]]] = {}

    # -- inputs ------------------------------------------------------------------------------------------------
    def _inputs(self, requests: Sequence[AnnotationRequest]) -> Any:
        """Table 1's chat per request, its clip at the extractor's rate, left padded for generation, on the model."""
        audios = [clip_at_rate(r.audio, r.sample_rate, self.sampling_rate) for r in requests]
        conversations = [
            annotation_conversation(a, r.transcript, r.classes, r.persona)
            for a, r in zip(audios, requests, strict=True)
        ]
        return on_model(chat_inputs(self.processor, conversations, audios, self.sampling_rate, "left"), self.net)

    def _generation_config(self, max_new_tokens: int, **extra: Any) -> Any:
        """Greedy over the SeededSampler's output; nothing of the hub's defaults (top-k/p, penalties, n-gram bans)."""
        from ser_lightning.alm.generation import generation_config

        return generation_config(self.processor.tokenizer, max_new_tokens, **extra)

    def _class_sequences(self, classes: Sequence[str]) -> list[list[tuple[int, ...]]]:
        """The classes' answer token sequences (:func:`class_answer_sequences`), checked once per class tuple."""
        key = tuple(classes)
        if key not in self._sequences:
            self._sequences[key] = class_answer_sequences(self.processor.tokenizer, key)
        return self._sequences[key]

    # -- modes -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _sample(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        inputs = self._inputs(requests)
        sampler = SeededSampler(
            [r.temperature for r in requests], [request_seed(self.seed, r.uid, r.k) for r in requests]
        )
        out = self.net.generate(
            **inputs, generation_config=self._generation_config(self.max_new_tokens), logits_processor=[sampler]
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        lengths = inputs["attention_mask"].sum(dim=1)
        pad = self.processor.tokenizer.pad_token_id
        answers = []
        for row, request in enumerate(requests):
            raw = self.processor.tokenizer.decode(new[row], skip_special_tokens=True).strip()
            label, reason = parse_label(raw, request.classes)
            generated = int((new[row] != pad).sum()) if pad is not None else new.shape[1]
            answers.append(AnnotationAnswer(label, None, raw, reason, int(lengths[row]) + generated))
        return answers

    @torch.inference_mode()
    def _exact(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        inputs = self._inputs(requests)
        lengths = inputs["attention_mask"].sum(dim=1)
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, request in enumerate(requests):
            groups.setdefault(tuple(request.classes), []).append(row)
        answers: list[AnnotationAnswer | None] = [None] * len(requests)
        for key, rows in groups.items():
            probs = self._class_probabilities(inputs, [requests[r] for r in rows], rows, key)
            for row, p in zip(rows, probs, strict=True):
                label = key[int(p.argmax())]
                answers[row] = AnnotationAnswer(label, p.tolist(), label, None, int(lengths[row]))
        return answers  # type: ignore[return-value]

    def _class_probabilities(
        self, inputs: dict[str, Tensor], requests: list[AnnotationRequest], rows: list[int], classes: tuple[str, ...]
    ) -> Tensor:
        """``(len(rows), C)`` float64: each class's forms' total probability, renormalised over the classes."""
        variants = self._class_sequences(classes)
        owner = torch.tensor([c for c, seqs in enumerate(variants) for _ in seqs])
        if len(rows) < inputs["input_ids"].shape[0]:
            inputs = {k: v[torch.tensor(rows, device=v.device)] for k, v in inputs.items()}
        temperatures = [r.temperature if r.temperature > 0 else 1.0 for r in requests]
        flat = [s for seqs in variants for s in seqs]
        scores = continuation_log_likelihoods(self.net, inputs, flat, temperatures)
        totals = torch.stack([torch.logsumexp(scores[:, owner == c], dim=1) for c in range(len(classes))], dim=1)
        probs = torch.softmax(totals, dim=-1)
        greedy = torch.tensor([r.temperature <= 0 for r in requests])
        one_hot = torch.nn.functional.one_hot(totals.argmax(-1), len(classes)).double()
        return torch.where(greedy[:, None], one_hot, probs)

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        """Answers in request order, ``max_batch`` requests per forward (one caller at a time: a lock)."""
        requests = list(requests)
        answers: list[AnnotationAnswer] = []
        with self._lock:
            for start in range(0, len(requests), self.max_batch):
                chunk = requests[start : start + self.max_batch]
                if self.mode == "exact":
                    for r in chunk:  # a clear error before any forward when the classes' answers collide
                        self._class_sequences(r.classes)
                answers.extend(self._exact(chunk) if self.mode == "exact" else self._sample(chunk))
                self.stats["requests"] += len(chunk)
                self.stats["tokens"] += sum(a.tokens or 0 for a in answers[-len(chunk) :])
        return answers

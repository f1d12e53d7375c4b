"""Frozen pretrained parts, left out of checkpoints (lean checkpoints) and checked by fingerprint when loaded.

A part of a model that is frozen AND loaded from a pretrained source (a frozen MiniLM / BERT ``TextEncoder``, a
frozen pretrained ``AudioEncoder``, the Qwen2-Audio base under LoRA) is not stored: its frozen parameters are
left out of ``state_dict`` and the checkpoint's entry (``checkpoint["ser_lightning"]["lean"]``, see
:mod:`ser_lightning.runs.checkpoint`) keeps its source and a fingerprint instead. On loading, the rebuilt part must
match the fingerprint; its keys are the only ones allowed to be missing. Randomly initialised parts, trained
parameters and buffers always stay in.

Modules declare such a part with ``pretrained_source() -> {"source": ..., "module": submodule} | None``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ser_lightning.runs.json_values import plain

SAMPLE = 1024  # elements read per tensor by the fingerprint (evenly strided)
_RTOL = 1e-7  # relative tolerance of the fingerprint sums (summation order differs between devices)


def declared_parts(root: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module prefix: {"source", ...}}`` of the frozen pretrained parts declared by ``root``'s submodules."""
    parts: dict[str, dict[str, Any]] = {}
    for name, module in root.named_modules():
        declare = getattr(module, "pretrained_source", None)
        if module is root or not callable(declare) or any(name.startswith(p + ".") for p in parts):
            continue
        info = declare()
        if info:
            sub = str(info.get("module") or "")
            prefix = ".".join(p for p in (name, sub) if p)
            parts[prefix] = {k: v for k, v in info.items() if k != "module"}
    return parts


def frozen_keys(root: nn.Module, prefixes: Iterable[str]) -> set[str]:
    """State-dict keys of the frozen parameters under ``prefixes`` (trainable parameters and buffers excluded)."""
    heads = tuple(p + "." for p in prefixes)
    if not heads:
        return set()
    return {n for n, p in root.named_parameters(remove_duplicate=False) if n.startswith(heads) and not p.requires_grad}


def fingerprint(named: Iterable[tuple[str, Tensor]]) -> dict[str, Any]:
    """Cheap identity of a set of tensors: count, sizes, a hash of names/shapes/dtypes, float64 sums of a sample.

    Each tensor contributes at most :data:`SAMPLE` evenly strided elements, so a 7B model takes seconds, not the
    time of hashing its bytes.
    """
    layout = hashlib.sha256()
    count, numel, total, magnitude = 0, 0, 0.0, 0.0
    for name, tensor in sorted(named, key=lambda item: item[0]):
        data = tensor.detach()
        layout.update(f"{name}:{tuple(data.shape)}:{data.dtype}\n".encode())
        count, numel = count + 1, numel + data.numel()
        if data.numel() == 0 or data.is_meta:
            continue
        flat = data.reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].to(torch.float64)
        total += float(sample.sum())
        magnitude += float(sample.abs().sum())
    return {"tensors": count, "numel": numel, "layout": layout.hexdigest(), "sum": total, "abs_sum": magnitude}


def same_fingerprint(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal counts, sizes and layout, and sums equal up to a relative ``1e-7`` (summation order may differ)."""
    if any(a.get(k) != b.get(k) for k in ("tensors", "numel", "layout")):
        return False
    tol = _RTOL * max(float(a.get("abs_sum", 0.0)), float(b.get("abs_sum", 0.0)), 1e-12)
    return all(
        isinstance(a.get(k), int | float)
        and isinstance(b.get(k), int | float)
        and math.isfinite(float(a[k]))
        and abs(float(a[k]) - float(b[k])) <= tol
        for k in ("sum", "abs_sum")
    )


class FrozenParts:
    """The frozen pretrained parts of one model, with their fingerprints computed once and cached."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}

    def fingerprint(self, root: nn.Module, prefix: str) -> dict[str, Any]:
        """Fingerprint of the frozen parameters under ``prefix`` (cached while the part is the same module)."""
        part = root.get_submodule(prefix)
        cached = self._cache.get(prefix)
        if cached is not None and cached[0] == id(part):
            return cached[1]
        keys = frozen_keys(root, [prefix])
        named = dict(root.named_parameters(remove_duplicate=False))
        value = fingerprint((k, named[k]) for k in keys)
        self._cache[prefix] = (id(part), value)
        return value

    def entry(self, root: nn.Module, parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``{prefix: {"source", ..., "fingerprint"}}`` for the checkpoint entry."""
        return {p: {**plain(dict(info)), "fingerprint": self.fingerprint(root, p)} for p, info in parts.items()}

    def check(self, root: nn.Module, parts: Mapping[str, Mapping[str, Any]], stored: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the part and its sources when a stored part is absent or differs."""
        for prefix, record in stored.items():
            source = record.get("source")
            if prefix not in parts:
                raise ValueError(
                    f"the checkpoint left out {prefix!r} (frozen, loaded from {source!r}) but this model does not "
                    f"load {prefix!r} frozen from a pretrained source: build it as it was trained"
                )
            if not same_fingerprint(self.fingerprint(root, prefix), record.get("fingerprint") or {}):
                raise ValueError(
                    f"{prefix!r}: the weights loaded from {parts[prefix].get('source')!r} are not the ones the "
                    f"checkpoint was trained with (from {source!r}; fingerprint differs): give the same pretrained "
                    "model (same files or hub revision)"
                )


def check_keys(state: Mapping[str, Any], own: Iterable[str], allowed_missing: set[str]) -> None:
    """Every key of the model in ``state`` except the frozen parts', and no key the model lacks (``KeyError``)."""
    own = set(own)
    missing = sorted(own - set(state) - allowed_missing)
    unexpected = sorted(set(state) - own)
    if missing:
        raise KeyError(
            f"checkpoint lacks {len(missing)} trained parameters (other model settings?): {missing[:5]}"
        )
    if unexpected:
        raise KeyError(f"checkpoint has {len(unexpected)} parameters this model lacks: {unexpected[:5]}")

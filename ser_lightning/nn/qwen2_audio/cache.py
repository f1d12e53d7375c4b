"""On-disk cache of the frozen Qwen2-Audio encoder's outputs, one file per utterance.

The audio encoder is frozen, so an un-augmented utterance's encoder output is the same every epoch and every
validation pass: :meth:`EncoderCache.encode` computes it once and reads it back afterwards. Entries live under
``<directory>/<fingerprint>/``, where the fingerprint hashes the encoder's weights (and dtypes) and the feature
settings, so changing either starts a fresh cache. Each file is written to a temporary name in its final folder
and moved into place with ``os.replace``: readers on other ranks or workers see either no file or a whole one, and
two writers of the same utterance write the same bytes. DiME-mixed samples (``augmented``) are computed every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ser_lightning.nn.qwen2_audio.forward import audio_output_lengths, encode_audio, encoder_requires_grad

# Feature-extractor settings that change the mel features the encoder sees.
FEATURE_KEYS = (
    "feature_size",
    "sampling_rate",
    "hop_length",
    "n_fft",
    "chunk_length",
    "n_samples",
    "padding_value",
    "dither",
)


def feature_settings(feature_extractor: Any) -> dict[str, Any]:
    """The settings of a (Whisper) feature extractor that shape its output, as JSON-ready values."""
    return {k: getattr(feature_extractor, k) for k in FEATURE_KEYS if hasattr(feature_extractor, k)}


def encoder_fingerprint(audio_tower: nn.Module, settings: Mapping[str, Any] | None = None) -> str:
    """A hex digest of every encoder tensor (name, dtype, shape, bytes) and the feature ``settings``.

    Hashes all weights once (about a second per GB): a partial hash could miss a fine-tuned encoder.
    """
    digest = hashlib.blake2b(digest_size=16)
    state = audio_tower.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    digest.update(json.dumps(dict(settings or {}), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class EncoderCache:
    """Encoder outputs on disk, keyed by utterance id under one encoder fingerprint."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        """Use ``<directory>/<fingerprint>/`` (created on first write).

        Args:
            directory: the cache's root; several fingerprints can live side by side.
            fingerprint: :func:`encoder_fingerprint` of the encoder and feature settings in use.
        """
        if not fingerprint or any(c in fingerprint for c in "/\\."):
            raise ValueError(f"fingerprint must be a plain non-empty name, got {fingerprint!r}")
        self.root = Path(directory) / fingerprint
        self.fingerprint = fingerprint

    def path(self, uid: str) -> Path:
        """Where the entry of ``uid`` lives: hashed, so any id (slashes, unicode) makes a safe file name."""
        key = hashlib.sha256(uid.encode()).hexdigest()
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, uid: str, num_tokens: int | None = None) -> Tensor | None:
        """The cached ``(num_tokens, d_model)`` output of ``uid``; ``None`` if missing, unreadable or another shape."""
        path = self.path(uid)
        if not path.is_file():
            return None
        try:
            entry = load_file(path)
        except (OSError, SafetensorError):
            return None
        features = entry.get("features")
        if features is None or (num_tokens is not None and features.shape[0] != num_tokens):
            return None
        return features

    def save(self, uid: str, features: Tensor) -> None:
        """Write ``features`` for ``uid`` atomically (temporary file in the same folder, then ``os.replace``)."""
        path = self.path(uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": features.detach().to("cpu").contiguous()}, tmp, metadata={"id": uid})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def encode(
        self,
        audio_tower: nn.Module,
        input_features: Tensor,
        feature_attention_mask: Tensor,
        *,
        ids: Sequence[str],
        augmented: Sequence[bool] | Tensor | None = None,
        trim: bool = True,
    ) -> list[Tensor]:
        """:func:`encode_audio` through this cache: hits are read, misses computed in one batch and written back.

        Args:
            audio_tower: the frozen encoder; refused when any of its parameters trains (LoRA on the encoder).
            input_features: ``(B, num_mel_bins, frames)``, as the processor pads them.
            feature_attention_mask: ``(B, frames)``, 1 on valid frames.
            ids: utterance id of each sample (the cache key).
            augmented: per-sample flag; flagged samples (DiME mixes) bypass the cache both ways.
            trim: run the misses on valid frames only (see :func:`encode_audio`).
        """
        if encoder_requires_grad(audio_tower):
            raise ValueError(
                "the encoder cache needs a frozen audio encoder, but encoder parameters train (LoRA on the audio "
                "encoder?): turn the cache off or leave the encoder out of LoRA"
            )
        batch = input_features.shape[0]
        if len(ids) != batch:
            raise ValueError(f"got {len(ids)} ids for a batch of {batch}")
        flags = [False] * batch if augmented is None else [bool(a) for a in augmented]
        if len(flags) != batch:
            raise ValueError(f"got {len(flags)} augmented flags for a batch of {batch}")
        counts = audio_output_lengths(feature_attention_mask.sum(-1).to(torch.long)).tolist()
        weight = next(audio_tower.parameters())
        out: list[Tensor | None] = [None] * batch
        for i in range(batch):
            if not flags[i]:
                hit = self.load(ids[i], counts[i])
                if hit is not None:
                    out[i] = hit.to(device=weight.device, dtype=weight.dtype)
        todo = [i for i in range(batch) if out[i] is None]
        if todo:
            feats = input_features[torch.tensor(todo, device=input_features.device)]
            mask = feature_attention_mask[torch.tensor(todo, device=feature_attention_mask.device)]
            fresh = encode_audio(audio_tower, feats, mask, trim=trim)
            for i, features in zip(todo, fresh, strict=True):
                out[i] = features
                if not flags[i]:
                    self.save(ids[i], features)
        return out  # type: ignore[return-value]

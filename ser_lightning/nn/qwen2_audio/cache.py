"""On-disk cache of the frozen Qwen2-Audio encoder's outputs, one file per utterance and audio.

The audio encoder is frozen, so an un-augmented utterance's encoder output is the same every epoch and every
validation pass: :meth:`EncoderCache.encode` computes it once and reads it back afterwards. Entries live under
``<directory>/<fingerprint>/``, where the fingerprint hashes the encoder's weights (and dtypes) and the feature
settings, so changing either starts a fresh cache. An entry is keyed by the utterance id AND a digest of the
un-padded mel features the batch carries for it (:func:`audio_digest`): re-prepared shards with new audio under the
same ids, or two corpora sharing ids and a cache directory, never read each other's encodings (an entry written
before the digest existed is simply never found). Each file is written to a temporary name in its final folder and
moved into place with ``os.replace``: readers on other ranks or workers see either no file or a whole one, and two
writers of the same entry write the same bytes. DiME-mixed samples (``augmented``) are computed every time.
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
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


def audio_digest(features: Tensor, frames: int) -> str:
    """A hex digest of one utterance's un-padded mel features ``(num_mel_bins, frames)``, as float32 bytes.

    Hashing the features the encoder sees costs a copy and a hash of at most 1.5 MB (30 s), far less than the encoder.
    """
    valid = features[:, :frames].detach().to(device="cpu", dtype=torch.float32).contiguous()
    digest = hashlib.blake2b(f"{tuple(valid.shape)}|".encode(), digest_size=16)
    digest.update(valid.numpy().tobytes())
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

    def path(self, uid: str, audio: str) -> Path:
        """Where the entry of ``uid`` with audio digest ``audio`` lives: hashed, so any id makes a safe file name."""
        if not audio or not audio.isalnum():
            raise ValueError(f"audio must be a hex digest (audio_digest), got {audio!r}")
        key = hashlib.sha256(uid.encode()).hexdigest()
        return self.root / key[:2] / f"{key}-{audio}.safetensors"

    def load(self, uid: str, audio: str, num_tokens: int | None = None) -> Tensor | None:
        """The cached ``(num_tokens, d_model)`` output of ``uid`` for that audio, else ``None``.

        ``None`` when missing, unreadable, of another shape, or recorded for another id or audio digest.
        """
        path = self.path(uid, audio)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as entry:
                meta = entry.metadata() or {}
                features = entry.get_tensor("features") if "features" in entry.keys() else None
        except (OSError, SafetensorError):
            return None
        if meta.get("id") != uid or meta.get("audio") != audio:
            return None
        if features is None or (num_tokens is not None and features.shape[0] != num_tokens):
            return None
        return features

    def save(self, uid: str, audio: str, features: Tensor) -> None:
        """Write ``features`` for ``uid`` and ``audio`` atomically (temporary file in the same folder, then replace)."""
        path = self.path(uid, audio)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            metadata = {"id": uid, "audio": audio}
            save_file({"features": features.detach().to("cpu").contiguous()}, tmp, metadata=metadata)
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
            ids: utterance id of each sample (the cache key, with the digest of its valid mel frames).
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
        frames = feature_attention_mask.sum(-1).to(torch.long)
        counts = audio_output_lengths(frames).tolist()
        host = input_features[..., : int(frames.max())].detach().to(device="cpu", dtype=torch.float32)  # one copy
        digests = [None if flags[i] else audio_digest(host[i], int(frames[i])) for i in range(batch)]
        weight = next(audio_tower.parameters())
        out: list[Tensor | None] = [None] * batch
        for i in range(batch):
            if digests[i] is not None:
                hit = self.load(ids[i], digests[i], counts[i])
                if hit is not None:
                    out[i] = hit.to(device=weight.device, dtype=weight.dtype)
        todo = [i for i in range(batch) if out[i] is None]
        if todo:
            feats = input_features[torch.tensor(todo, device=input_features.device)]
            mask = feature_attention_mask[torch.tensor(todo, device=feature_attention_mask.device)]
            fresh = encode_audio(audio_tower, feats, mask, trim=trim)
            for i, features in zip(todo, fresh, strict=True):
                out[i] = features
                if digests[i] is not None:
                    self.save(ids[i], digests[i], features)
        return out  # type: ignore[return-value]

"""Lean, self-describing checkpoints of models built in Python: fingerprints, declared parts, spec, restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from ser_lightning.models import WavLMMultitask
from ser_lightning.nn import AudioEncoder, TextEncoder, tiny_audio_config, tiny_text_config
from ser_lightning.runs import frozen_parts
from ser_lightning.runs.checkpoint import CHECKPOINT_KEY, checkpoint_info, restore_model
from ser_lightning.runs.frozen_parts import fingerprint, same_fingerprint


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(100, 100, generator=g), "b.bias": torch.randn(7, generator=g)}


def test_fingerprint_sees_values_shapes_dtypes_and_names_but_not_order() -> None:
    base = _tensors()
    reference = fingerprint(base.items())
    assert same_fingerprint(fingerprint(reversed(list(base.items()))), reference)
    assert reference["tensors"] == 2
    assert reference["numel"] == 100 * 100 + 7
    changed = dict(base, **{"a.weight": base["a.weight"].clone()})
    changed["a.weight"][0, 0] += 1e-3  # the first element is always sampled
    assert not same_fingerprint(fingerprint(changed.items()), reference)
    assert not same_fingerprint(fingerprint(dict(base, **{"b.bias": base["b.bias"].double()}).items()), reference)
    renamed = {"c.weight": base["a.weight"], "b.bias": base["b.bias"]}
    assert not same_fingerprint(fingerprint(renamed.items()), reference)
    assert not same_fingerprint(fingerprint(_tensors(seed=1).items()), reference)
    noisy = dict(reference, sum=reference["sum"] * (1 + 1e-12))  # another summation order on another device
    assert same_fingerprint(noisy, reference)


def _pretrained_wavlm(directory: Path) -> Path:
    torch.manual_seed(0)
    config = tiny_audio_config("wavlm")
    model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.save_pretrained(directory)
    return directory


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(3, 8000, generator=g)
    mask = torch.ones(3, 8000, dtype=torch.long)
    mask[1, 5000:] = 0
    return {"audio": audio, "audio_mask": mask}


def _save(model: torch.nn.Module, path: Path) -> Path:
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_frozen_pretrained_audio_encoder_is_left_out_and_restored(tmp_path: Path) -> None:
    source = str(_pretrained_wavlm(tmp_path / "wavlm"))
    torch.manual_seed(1)
    model = WavLMMultitask(AudioEncoder(model=source, freeze="all"), num_classes=4).eval()
    model.set_model_spec({
        "class_path": "ser_lightning.models.WavLMMultitask",
        "init_args": {"audio_encoder": {"class_path": "ser_lightning.nn.AudioEncoder",
                                        "init_args": {"model": source, "freeze": "all"}}, "num_classes": 4},
    })  # fmt: skip
    ckpt = _save(model, tmp_path / "model.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    frozen = {f"audio_encoder.model.{n}" for n, _ in model.audio_encoder.model.named_parameters()}
    assert frozen
    assert not frozen & set(state)
    assert set(state) == set(model.state_dict()) - frozen  # heads and buffers stay
    info = checkpoint_info(ckpt)
    assert info["lean"]["audio_encoder.model"]["source"] == source
    assert info["lean"]["audio_encoder.model"]["fingerprint"]["tensors"] == len(frozen)
    assert info["sample_rate"] == 16000
    restored = restore_model(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(restored(_batch()), model(_batch()), atol=1e-6, rtol=0)


def test_feature_extractor_freeze_leaves_out_only_the_frozen_front_end(tmp_path: Path) -> None:
    source = str(_pretrained_wavlm(tmp_path / "wavlm"))
    model = WavLMMultitask(AudioEncoder(model=source, freeze="feature_extractor"), num_classes=4)
    assert set(model.lean_parts()) == {"audio_encoder.model.feature_extractor"}
    kept = model.stored_state(model.state_dict())
    front = {f"audio_encoder.model.feature_extractor.{n}" for n, _ in
             model.audio_encoder.model.feature_extractor.named_parameters()}  # fmt: skip
    assert front
    assert set(kept) == set(model.state_dict()) - front


def test_random_or_trainable_encoders_are_kept() -> None:
    assert TextEncoder(model=None, config=tiny_text_config(), freeze=True).pretrained_source() is None
    assert TextEncoder(model="minilm", freeze=False).pretrained_source() is None
    assert TextEncoder(model="minilm", freeze=True).pretrained_source() == {"source": "minilm", "module": "model"}
    assert AudioEncoder(config=tiny_audio_config(), freeze="all").pretrained_source() is None


def test_a_model_built_in_python_without_its_spec_cannot_be_restored(tmp_path: Path) -> None:
    model = WavLMMultitask(AudioEncoder(config=tiny_audio_config(), freeze="none"), num_classes=4)
    ckpt = _save(model, tmp_path / "model.ckpt")
    assert checkpoint_info(ckpt)["model"]["class_path"] == "ser_lightning.models.wavlm_multitask.WavLMMultitask"
    with pytest.raises(ValueError, match=r"\['audio_encoder'\] were not recorded"):
        restore_model(ckpt)


def test_an_old_checkpoint_or_an_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    model = WavLMMultitask(AudioEncoder(config=tiny_audio_config(), freeze="none"), num_classes=4)
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict()}, old)
    with pytest.raises(ValueError, match=rf"{old.name} has no '{CHECKPOINT_KEY}' entry"):
        checkpoint_info(old)
    checkpoint = {"state_dict": dict(model.state_dict(), extra=torch.zeros(1))}
    with pytest.raises(KeyError, match="parameters this model lacks"):
        model.on_load_checkpoint(checkpoint)


def test_fingerprints_are_computed_once_per_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = str(_pretrained_wavlm(tmp_path / "wavlm"))
    model = WavLMMultitask(AudioEncoder(model=source, freeze="all"), num_classes=4)
    calls = []
    monkeypatch.setattr(frozen_parts, "fingerprint", lambda named: calls.append(1) or fingerprint(named))
    first = model.checkpoint_entry()["lean"]
    assert model.checkpoint_entry()["lean"] == first
    assert len(calls) == 1

"""Checkpoints written before the house move (``tests/fixtures/checkpoints``) load and predict what they did.

A demo AmbER² checkpoint (MelEncoder + the frozen MiniLM, lean) and a tiny Qwen2-Audio LoRA + head checkpoint over
a saved base: both were written at commit 72c5cdd, before the modules they name moved; their expected predictions
on 8 demo test clips were computed then.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ser_lightning import load_model
from ser_lightning.runs.checkpoint import CHECKPOINT_KEY, read_checkpoint, restore_model

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "checkpoints"
TEST_SHARD = ROOT / "shards" / "demo" / "test-000000.tar"
CASES = {"demo_amber2.ckpt": None, "qwen2_audio_lora_tiny.ckpt": FIXTURES / "qwen2_audio_tiny_base"}


def _clips(count: int = 8) -> list[tuple[str, np.ndarray, int, str]]:
    """The first ``count`` clips of the demo test shard, in tar order: (key, audio, rate, transcript)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(TEST_SHARD) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    clips = []
    for key in list(members)[:count]:
        audio, rate = sf.read(io.BytesIO(members[key]["flac"]), dtype="float32")
        clips.append((key, audio, rate, json.loads(members[key]["json"]).get("transcript") or ""))
    return clips


@pytest.fixture(scope="module")
def expected() -> dict[str, list[dict]]:
    return json.loads((FIXTURES / "expected_predictions.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(CASES))
def test_an_old_checkpoint_predicts_what_it_predicted(name: str, expected: dict[str, list[dict]]) -> None:
    backbone = CASES[name]
    predictor = load_model(FIXTURES / name, backbone=None if backbone is None else str(backbone), device="cpu")
    clips = _clips()
    rows = predictor.predict([c[1] for c in clips], transcripts=[c[3] for c in clips], sample_rate=clips[0][2])
    want = expected[name]
    assert [r["id"] for r in rows] == [r["id"] for r in want]
    for got, old in zip(rows, want, strict=True):
        assert got["classes"] == old["classes"]
        assert got["top"] == old["top"]
        np.testing.assert_allclose(got["probabilities"], old["probabilities"], atol=1e-6, rtol=0)
        assert got["entropy"] == pytest.approx(old["entropy"], abs=1e-6)
        assert got.keys() == old.keys() - {"clip"}
        for head, probs in old.get("experts", {}).items():
            np.testing.assert_allclose(got["experts"][head], probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_an_old_checkpoint_restores_under_its_recorded_class_paths(name: str) -> None:
    checkpoint = read_checkpoint(FIXTURES / name)
    entry = checkpoint[CHECKPOINT_KEY]
    assert entry["format"] == 1
    backbone = CASES[name]
    model = restore_model(checkpoint, backbone=None if backbone is None else str(backbone))
    assert f"{type(model).__module__}.{type(model).__name__}".startswith("ser_lightning.models.")
    assert entry["model"]["class_path"] == model.model_spec()["class_path"]  # the spec is kept as recorded
    assert not model.training
    assert all(not torch.isnan(p).any() for p in model.parameters())

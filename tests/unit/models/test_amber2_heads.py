"""AmbER²'s per-head evaluation equals a separate evaluation of each head (the same weights, that head the student)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from torch.utils.data import DataLoader

from ser_lightning.models import AmbER2
from ser_lightning.models.amber2 import HEADS
from ser_lightning.nn import MelEncoder, TextEncoder, tiny_text_config

CLASSES = ["ang", "hap", "neu", "sad"]


def _batches(num: int = 3, size: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for b in range(num):
        votes = torch.randint(0, 4, (size, 4), generator=g).double() + torch.eye(4, dtype=torch.float64)[b % 4]
        ids = torch.randint(1000, 2000, (size, 6), generator=g)
        out.append(
            {
                "audio": 0.1 * torch.randn(size, 8000, generator=g),
                "audio_mask": torch.ones(size, 8000, dtype=torch.long),
                "targets": (votes / votes.sum(-1, keepdim=True)).float(),
                "entropy": torch.tensor(scipy_entropy(votes.numpy(), axis=1)),
                "ids": [f"b{b}u{i}" for i in range(size)],
                "text_input_ids": ids,
                "text_attention_mask": torch.ones_like(ids),
            }
        )
    return out


def _model(student: str) -> AmbER2:
    torch.manual_seed(0)
    text = TextEncoder(model=None, config=tiny_text_config(), freeze=False)
    audio = MelEncoder(n_mels=16, hidden_dim=16, num_layers=2)
    return AmbER2(audio, text, num_classes=4, classes=CLASSES, bin_edges=[0.9, 1.2], student=student)


def _test(model: AmbER2, batches: list[dict], tmp_path) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.test(model, DataLoader(batches, batch_size=None), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-7)


def test_each_heads_metrics_equal_that_head_evaluated_as_the_student(tmp_path):
    batches = _batches()
    fusion = _model("fusion")
    got = _test(fusion, batches, tmp_path / "fusion")
    accounting = ("scored", "skipped", "reference")  # the pass's tally, not metrics
    student_keys = [k[5:] for k in got if k.startswith("test/") and k.split("/")[1] not in (*HEADS, *accounting)]
    assert {"js", "bin1/js", "wbin3/js", "f1/sad", "uar", "bin2/kl_median"} <= set(student_keys)
    for head in HEADS:
        other = _model(head)
        other.load_state_dict(fusion.state_dict())
        alone = _test(other, batches, tmp_path / head)
        for key in student_keys:  # every metric: overall, tertile and width bins, per-class F1, medians
            assert _same(got[f"test/{head}/{key}"], alone[f"test/{key}"]), (head, key)
    for key in student_keys:  # the student's unprefixed metrics are the fusion head's
        assert _same(got[f"test/{key}"], got[f"test/fusion/{key}"]), key


def test_one_forward_per_batch_and_val_metrics_per_head(tmp_path, monkeypatch):
    model = _model("fusion")
    calls = []
    original = model.head_logits
    monkeypatch.setattr(model, "head_logits", lambda batch: calls.append(1) or original(batch))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.validate(model, DataLoader(_batches(2), batch_size=None), verbose=False)
    assert len(calls) == 2  # the encoders run once per batch for the student and all three heads
    assert {"val/js", "val/audio/js", "val/text/bin3/bc", "val/fusion/wbin1/acc"} <= set(trainer.callback_metrics)
    assert model.head_metrics["val"]["audio"].scores == []  # reset after logging


def test_head_metrics_leave_checkpoint_keys_unchanged():
    model = _model("fusion")
    assert not any("head_metrics" in k for k in model.state_dict())

"""``invalid_fallback: exclude`` (paper 003 Appendix A.2): only valid answers are scored, the rest counted invalid.

Generation is scripted per utterance id (as in ``test_alm.py``) and a real Trainer runs the test and predict loops,
so every metric, reference predictor and count is checked against numbers computed here by hand with scipy on the
valid rows only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from torch.utils.data import DataLoader, IterableDataset

import ser_lightning.models.alm as alm_module
from ser_lightning.alm.generation import Candidates
from ser_lightning.metrics.calibration import expected_calibration_error
from ser_lightning.models import ALMDistribution
from ser_lightning.nn.qwen2_audio.offline import TINY_QWEN2_AUDIO_CONFIG
from ser_lightning.runs.metrics_json import CALIBRATION_BINS, pass_metrics
from ser_lightning.types import DataFacts

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["Anger", "Happy", "Sad"]
EDGES = [0.5, 0.9]  # inner entropy edges (nats) of the per-bin metrics: (lo, hi], an edge in the lower bin
TRAIN_MEAN = [0.5, 0.3, 0.2]
ANSWERS = {  # the one greedy answer per utterance, and the distribution it parses to (None: no valid answer)
    "u0": ('{"Anger": 0.6, "Happiness": 0.4}', [0.6, 0.4, 0.0]),
    "u1": ("I cannot tell.", None),
    "u2": ("['sad']", [0.0, 0.0, 1.0]),
    "u3": ("0.5", None),  # a single float is discarded (Table 4)
    "u4": ('{"Anger": 0.2, "Happy": 0.3, "Sad": 0.5}', [0.2, 0.3, 0.5]),
    "u5": ('{"Anger": 0.1, "Happy": 0.8, "Sad": 0.1}', [0.1, 0.8, 0.1]),
}
VALID = [uid for uid, (_, dist) in ANSWERS.items() if dist is not None]
TARGETS = {
    "u0": [0.7, 0.3, 0.0],
    "u1": [0.2, 0.2, 0.6],
    "u2": [0.1, 0.1, 0.8],
    "u3": [1.0, 0.0, 0.0],
    "u4": [0.4, 0.3, 0.3],
    "u5": [0.0, 1.0, 0.0],
}


def _batches() -> list[dict[str, Any]]:
    out = []
    for ids in (["u0", "u1", "u2"], ["u3", "u4", "u5"]):
        targets = torch.tensor([TARGETS[u] for u in ids], dtype=torch.float32)
        ent = torch.tensor([scipy_entropy(TARGETS[u]) for u in ids], dtype=torch.float64)
        out.append({"ids": ids, "targets": targets, "entropy": ent, "audio": torch.zeros(len(ids), 160)})
    return out


class Stream(IterableDataset):
    """The batches with no length, like the shard stream (a sized loader counts as a cut pass: ``_limited``)."""

    def __iter__(self):
        return iter(_batches())


def _loader() -> DataLoader:
    return DataLoader(Stream(), batch_size=None, collate_fn=lambda b: b)


def _facts(expected: int) -> DataFacts:
    expectation = {"split": "test", "expected": expected, "allow_partial": False, "train_mean": TRAIN_MEAN}
    return DataFacts(3, CLASSES, EDGES, None, None, 0, None, "primary", 16000, 3, {"test": expectation})


def _model(monkeypatch: pytest.MonkeyPatch, expected: int = 6, **kwargs: Any) -> ALMDistribution:
    model = ALMDistribution(
        backbone=None, random_config=TINY_QWEN2_AUDIO_CONFIG, num_classes=3, classes=CLASSES, bin_edges=EDGES, **kwargs
    )
    model.backbone = torch.nn.Linear(1, 1)  # built; generation is scripted below
    model.processor = type("P", (), {"tokenizer": None})()
    monkeypatch.setattr(model, "_inputs", lambda batch: {"ids": list(batch["ids"])})

    def generate(backbone, tokenizer, inputs, **options):
        ids = inputs["ids"]
        return Candidates(
            [[ANSWERS[u][0]] for u in ids], torch.zeros(len(ids), 1, dtype=torch.float64), torch.ones(len(ids), 1)
        )

    monkeypatch.setattr(alm_module, "generate_candidates", generate)
    model.connect_data(_facts(expected))
    return model


def _trainer(root: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False
    )


def _js(p: list[float], t: list[float]) -> float:
    return float(jensenshannon(p, t, base=2) ** 2)


def _f32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _bin(uid: str) -> int:
    """1-based entropy bin of an utterance by hand: (lo, hi] between EDGES."""
    h = scipy_entropy(TARGETS[uid])
    return 1 + sum(h > e for e in EDGES)


def test_exclude_scores_only_the_valid_answers_and_counts_the_rest_invalid(monkeypatch, tmp_path):
    model = _model(monkeypatch, invalid_fallback="exclude")
    logged = _trainer(tmp_path).test(model, _loader(), verbose=False)[0]

    js = {u: _js(ANSWERS[u][1], TARGETS[u]) for u in VALID}
    assert logged["test/count"] == len(VALID) == 4
    assert logged["test/js"] == pytest.approx(np.mean(list(js.values())), abs=1e-6)
    bc = [np.sqrt(np.multiply(ANSWERS[u][1], TARGETS[u])).sum() for u in VALID]
    assert logged["test/bc"] == pytest.approx(np.mean(bc), abs=1e-6)
    acc = [np.argmax(ANSWERS[u][1]) == np.argmax(TARGETS[u]) for u in VALID]
    assert logged["test/acc"] == pytest.approx(np.mean(acc), abs=1e-6)
    for b in (1, 2, 3):  # every bin on the valid rows only
        members = [u for u in VALID if _bin(u) == b]
        assert logged[f"test/bin{b}/count"] == len(members)
        if members:
            assert logged[f"test/bin{b}/js"] == pytest.approx(np.mean([js[u] for u in members]), abs=1e-6)
    assert {_bin(u) for u in VALID} == {1, 2, 3}  # the fixture fills every bin
    assert logged["test/valid_fraction"] == pytest.approx(4 / 6)
    assert logged["test/excluded"] == 2
    assert "test/fallback" not in logged  # nothing stood in for the invalid answers

    report = model.eval_reports["test"]
    assert (report["scored"], report["invalid"], report["skipped"], report["expected"]) == (4, 2, 0, 6)
    assert report["complete"] is True  # 4 scored + 2 invalid + 0 skipped == the card's 6
    uniform = np.mean([_js([1 / 3] * 3, _f32(TARGETS[u])) for u in VALID])  # on the batch's float32 targets
    train_mean = np.mean([_js(TRAIN_MEAN, _f32(TARGETS[u])) for u in VALID])
    assert report["reference"]["uniform_js"] == pytest.approx(uniform, abs=1e-12)
    assert report["reference"]["train_mean_js"] == pytest.approx(train_mean, abs=1e-12)

    lines = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == list(ANSWERS)  # every utterance, the invalid ones marked
    for record in lines:
        uid = record["id"]
        if ANSWERS[uid][1] is None:
            assert (record["valid"], record["scored"], record["probabilities"]) == (False, False, [None] * 3)
            assert record["raw"] == ANSWERS[uid][0]
        else:
            assert record["valid"] is True
            assert "scored" not in record
            assert record["probabilities"] == pytest.approx(ANSWERS[uid][1], abs=1e-6)
    gathered = model.test_predictions.gathered  # what the bootstrap and calibration read: the scored rows only
    assert [r["id"] for r in gathered] == VALID

    metrics = pass_metrics("test", logged, report, records=gathered)
    assert (metrics["scored"], metrics["invalid"], metrics["complete"]) == (4, 2, True)
    probs = torch.tensor([ANSWERS[u][1] for u in VALID], dtype=torch.float32)
    targets = torch.tensor([TARGETS[u] for u in VALID], dtype=torch.float32)
    assert metrics["test/ece"] == pytest.approx(expected_calibration_error(probs, targets, CALIBRATION_BINS))


def test_uniform_fallback_stays_the_default_and_scores_every_utterance(monkeypatch, tmp_path):
    model = _model(monkeypatch)  # an old checkpoint's hparams carry their own value; a bare model keeps uniform
    assert model.hparams.invalid_fallback == "uniform"
    logged = _trainer(tmp_path).test(model, _loader(), verbose=False)[0]
    scored = {u: ANSWERS[u][1] or [1 / 3] * 3 for u in ANSWERS}
    assert logged["test/count"] == 6
    assert logged["test/js"] == pytest.approx(np.mean([_js(scored[u], TARGETS[u]) for u in ANSWERS]), abs=1e-6)
    assert logged["test/fallback"] == 2
    report = model.eval_reports["test"]
    assert (report["scored"], report["invalid"], report["complete"]) == (6, 0, True)
    uniform = np.mean([_js([1 / 3] * 3, _f32(TARGETS[u])) for u in ANSWERS])
    assert report["reference"]["uniform_js"] == pytest.approx(uniform, abs=1e-12)
    assert len(model.test_predictions.gathered) == 6


def test_a_pass_short_of_the_card_still_fails_and_names_the_invalid(monkeypatch, tmp_path):
    model = _model(monkeypatch, expected=7, invalid_fallback="exclude")
    with pytest.raises(RuntimeError, match=r"card lists 7 samples, 4 were scored, 2 had no valid prediction and 0"):
        _trainer(tmp_path).test(model, _loader(), verbose=False)


def test_predict_writes_every_utterance_with_the_invalid_marked(monkeypatch, tmp_path):
    model = _model(monkeypatch, invalid_fallback="exclude")
    rows = {r["id"]: r for batch in _trainer(tmp_path).predict(model, _loader()) for r in batch}
    assert list(rows) == list(ANSWERS)
    for uid, (_, dist) in ANSWERS.items():
        row = rows[uid]
        if dist is None:  # the uniform distribution stands in, marked: not valid, would not be scored
            assert (row["valid"], row["scored"]) == (False, False)
            assert row["probabilities"] == pytest.approx([1 / 3] * 3)
            assert row["entropy"] == pytest.approx(math.log(3))
        else:
            assert row["valid"] is True
            assert "scored" not in row
            assert row["probabilities"] == pytest.approx(dist, abs=1e-6)


def test_unknown_fallback_is_refused():
    with pytest.raises(ValueError, match="invalid_fallback"):
        ALMDistribution(backbone=None, random_config=TINY_QWEN2_AUDIO_CONFIG, num_classes=3, invalid_fallback="skip")


@pytest.mark.parametrize("name", ["alm_zeroshot.yaml", "alm_test_time_scaling.yaml"])
def test_the_papers_configs_exclude_invalid_answers(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))
    assert config["model"]["init_args"]["invalid_fallback"] == "exclude"

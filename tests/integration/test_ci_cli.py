"""``train.py test`` on the demo shards: per-head AmbER² metrics, bootstrap intervals and calibration in the JSON.

The interval is checked against numpy: scipy's per-utterance JS of ``test_predictions.jsonl``, resampled with the
same seeded index matrices, and ``np.percentile``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import TINY_DEMO
from scipy.spatial.distance import jensenshannon

from ser_lightning.cli.train import main
from ser_lightning.metrics.bootstrap import resample_indices

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *extra: str) -> Path:
    main(
        [
            "test",
            *TINY_DEMO,
            *("--data.max_batch_size", "16", "--data.max_batch_seconds", "256"),
            *("--trainer.limit_test_batches", "2", "--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", "ci"),
            *("--trainer.logger.init_args.version", "v"),
            *extra,
        ]
    )
    return tmp_path / "ci" / "v"


def test_test_metrics_hold_bootstrap_intervals_and_per_head_scores(tmp_path):
    out = _run(tmp_path, "--bootstrap_samples", "2000", "--bootstrap_seed", "3")
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["bootstrap"] == {
        "method": "percentile",
        "level": 0.95,
        "resampled": "utterances",
        "samples": 2000,
        "seed": 3,
    }
    for name in ("js", "bc", "r2", "kl", "acc", "f1", "wf1", "uar"):
        lo, hi = metrics[f"test/{name}_ci95"]
        assert lo - 1e-6 <= metrics[f"test/{name}"] <= hi + 1e-6, name  # logged in float32
    for group in ("bin1", "bin3", "wbin2"):  # per ambiguity bin: that bin's utterances resampled
        lo, hi = metrics[f"test/{group}/js_ci95"]
        assert lo - 1e-6 <= metrics[f"test/{group}/js"] <= hi + 1e-6, group
    for head in ("audio", "text", "fusion"):
        assert {f"test/{head}/js", f"test/{head}/bin1/js", f"test/{head}/wbin1/f1"} <= set(metrics)
    assert metrics["test/fusion/js"] == pytest.approx(metrics["test/js"])  # demo.yaml: the fusion head is the student
    assert 0 <= metrics["test/ece"] <= 1
    assert metrics["test/coverage100/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["test/coverage100/js"] == pytest.approx(metrics["test/js"], rel=1e-5)
    assert (out / "reliability.png").stat().st_size > 0
    assert any(b"test/reliability" in f.read_bytes() for f in out.glob("events.out.tfevents.*"))  # TensorBoard image

    records = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    p = np.array([r["probabilities"] for r in records], dtype=np.float64)
    q = np.array([r["target"] for r in records], dtype=np.float64)
    js = jensenshannon(p, q, base=2, axis=1) ** 2
    assert metrics["scored"] == len(records) == 32  # 2 batches of 16
    assert js.mean() == pytest.approx(metrics["test/js"], rel=1e-5)
    rows = torch.cat(list(resample_indices(len(records), 2000, seed=3))).numpy()
    np.testing.assert_allclose(metrics["test/js_ci95"], np.percentile(js[rows].mean(1), [2.5, 97.5]), rtol=1e-5)


def test_bootstrap_samples_zero_turns_the_intervals_off(tmp_path):
    out = _run(tmp_path, "--bootstrap_samples", "0", "--trainer.limit_test_batches", "1")
    assert (out / "test_predictions.jsonl").exists()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert "test/js" in metrics
    assert not any(k.endswith("_ci95") for k in metrics)
    assert "bootstrap" not in metrics

"""``ser-report``: Table-2 numbers and relative changes by hand, Fig.-3 bin medians against numpy / scipy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from ser_lightning.cli.report import main

# C = 4 targets and their Fig.-3 bin of H / log 4, by hand: 0 -> 1; 0.361, 0.234 -> 2; 0.686 -> 4; 0.923, 1.0 -> 5
TARGETS = [
    [1.0, 0.0, 0.0, 0.0],
    [0.8, 0.2, 0.0, 0.0],
    [0.6, 0.2, 0.2, 0.0],
    [0.4, 0.3, 0.2, 0.1],
    [0.25, 0.25, 0.25, 0.25],
    [0.9, 0.1, 0.0, 0.0],
]
BINS = [1, 2, 4, 5, 5, 2]  # bin 3 stays empty
METRICS = {
    "base": {"test/js": 0.3592, "test/bc": 0.6477, "test/r2": 0.3559, "test/acc": 0.5, "test/f1": 0.4, "scored": 6},
    "tts": {
        "test/js": 0.3450,
        "test/bc": 0.6409,
        "test/r2": 0.3815,
        "test/acc": 0.6,
        "test/f1": 0.3,
        "test/valid_fraction": 0.8333,
        "scored": 6,
    },
}


def _preds(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(4), size=len(TARGETS))


def _write_run(path: Path, name: str, seed: int) -> np.ndarray:
    path.mkdir(parents=True)
    (path / "test_metrics.json").write_text(json.dumps({**METRICS[name], "complete": True}))
    preds = _preds(seed)
    lines = []
    for i, (p, t) in enumerate(zip(preds, TARGETS, strict=True)):
        record = {"id": f"u{i}", "target": t, "target_entropy": float(scipy_entropy(t)), "probabilities": p.tolist()}
        if name == "tts":
            record.update(raw="{...}", strategy="json_dict")  # ALM extras: ignored by the report
        lines.append(json.dumps(record))
    (path / "test_predictions.jsonl").write_text("\n".join(lines) + "\n")
    return preds


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    base, tts = tmp_path / "runs" / "demo" / "version_0", tmp_path / "runs" / "alm_tts" / "version_3"
    preds = {"base": _write_run(base, "base", 1), "tts": _write_run(tts, "tts", 2)}
    return base, tts, preds


def _r2(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson correlation; 0 when a vector is constant (the evaluation code's convention)."""
    return 0.0 if np.std(a) == 0 or np.std(b) == 0 else float(np.corrcoef(a, b)[0, 1] ** 2)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_cells_and_relative_changes_by_hand(runs, tmp_path):
    base, tts, _ = runs
    out = tmp_path / "out"
    assert main([str(base), str(tts), "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    # runs written before the accounting's "invalid": n/a, and the valid fraction only where an ALM logged one
    assert "| demo/version_0 | 0.3592 | 0.6477 | 0.3559 | 0.5000 | 0.4000 | 6 | n/a | n/a |" in table
    # paper Table 2, IEMOCAP: JS 0.3592 -> 0.3450 is +4.0 (lower is better), BC 0.6477 -> 0.6409 is -1.0,
    # R² 0.3559 -> 0.3815 is +7.2; acc 0.5 -> 0.6 is +20%, F1 0.4 -> 0.3 is -25%
    assert (
        "| alm_tts/version_3 | 0.3450 (+4.0%) | 0.6409 (-1.0%) | 0.3815 (+7.2%) | 0.6000 (+20.0%) "
        "| 0.3000 (-25.0%) | 6 | n/a | 0.8333 |"
    ) in table
    rows = {r["run"]: r for r in _rows(out / "report.csv")}
    assert rows["demo/version_0"]["js_rel_change"] == "0.0"
    assert float(rows["alm_tts/version_3"]["js_rel_change"]) == pytest.approx((0.3592 - 0.3450) / 0.3592 * 100)
    assert float(rows["alm_tts/version_3"]["bc_rel_change"]) == pytest.approx((0.6409 - 0.6477) / 0.6477 * 100)
    assert float(rows["alm_tts/version_3"]["valid_fraction"]) == 0.8333
    assert rows["demo/version_0"]["valid_fraction"] == ""
    assert (rows["alm_tts/version_3"]["n"], rows["alm_tts/version_3"]["js"]) == ("6", "0.345")


def test_baseline_by_position_or_label_and_custom_labels(runs, tmp_path):
    base, tts, _ = runs
    assert main([str(base), str(tts), "--out", str(tmp_path / "a"), "--baseline", "1"]) == 0
    rows = {r["run"]: r for r in _rows(tmp_path / "a" / "report.csv")}
    assert float(rows["demo/version_0"]["js_rel_change"]) == pytest.approx((0.3450 - 0.3592) / 0.3450 * 100)
    assert rows["alm_tts/version_3"]["baseline"] == "True"
    args = [str(base), str(tts), "--out", str(tmp_path / "b"), "--labels", "w/o TTS,W-BoN", "--baseline", "W-BoN"]
    assert main(args) == 0
    table = (tmp_path / "b" / "report.md").read_text()
    assert "| w/o TTS | 0.3592 (-4.1%) |" in table
    assert "| W-BoN | 0.3450 | 0.6409 |" in table


def test_entropy_bin_medians_against_numpy(runs, tmp_path):
    base, tts, preds = runs
    out = tmp_path / "out"
    assert main([str(base), str(tts), "--out", str(out)]) == 0
    normalised = [scipy_entropy(t) / math.log(4) for t in TARGETS]
    assert [min(int(h * 5), 4) + 1 for h in normalised] == BINS  # the fixture's bins are what they claim
    rows = _rows(out / "entropy_bins.csv")
    assert len(rows) == 10
    for label, name in (("demo/version_0", "base"), ("alm_tts/version_3", "tts")):
        p, t = preds[name], np.array(TARGETS)
        per_item = {
            "js": np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, t, strict=True)]),
            "bc": np.sqrt(p * t).sum(1),
            "r2": np.array([_r2(a, b) for a, b in zip(p, t, strict=True)]),
        }
        got = {int(r["bin"]): r for r in rows if r["run"] == label}
        assert sorted(got) == [1, 2, 3, 4, 5]
        for b in range(1, 6):
            members = [i for i, k in enumerate(BINS) if k == b]
            assert int(got[b]["count"]) == len(members)
            for metric, values in per_item.items():
                cell = got[b][f"{metric}_median"]
                if not members:
                    assert cell == ""  # an empty bin is NaN: an empty cell, a gap in the plot
                    continue
                assert float(cell) == pytest.approx(float(np.median(values[members])), abs=1e-9), (label, b, metric)
    png = (out / "entropy_bins.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 1000


def test_missing_file_exits_2_naming_the_directory(runs, tmp_path, capsys):
    base, tts, _ = runs
    (tts / "test_predictions.jsonl").unlink()
    assert main([str(base), str(tts), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(tts) in err[0]
    assert "test_predictions.jsonl" in err[0]
    assert not (tmp_path / "out").exists()
    assert main([str(base), "--out", str(tmp_path / "o"), "--baseline", "nope"]) == 2
    assert main([str(base), "--out", str(tmp_path / "o"), "--labels", "a,b"]) == 2


def test_every_run_shows_n_scored_invalid_and_valid_fraction_and_unscored_lines_stay_out(tmp_path, capsys):
    trained, alm = tmp_path / "runs" / "demo", tmp_path / "runs" / "alm"
    _write_run(trained, "base", 1)
    (trained / "test_metrics.json").write_text(json.dumps({**METRICS["base"], "invalid": 0, "complete": True}))
    alm.mkdir(parents=True)
    preds = _preds(2)
    excluded = {1, 4}  # invalid answers (invalid_fallback: exclude): marked, in no metric
    lines = []
    for i, (p, t) in enumerate(zip(preds, TARGETS, strict=True)):
        record = {"id": f"u{i}", "target": t, "target_entropy": float(scipy_entropy(t)), "probabilities": p.tolist()}
        if i in excluded:
            record.update(probabilities=[None] * 4, valid=False, scored=False)
        lines.append(json.dumps(record))
    (alm / "test_predictions.jsonl").write_text("\n".join(lines) + "\n")
    metrics = {**METRICS["base"], "scored": 4, "invalid": 2, "complete": True}  # no logged valid_fraction
    (alm / "test_metrics.json").write_text(json.dumps(metrics))

    out = tmp_path / "out"
    assert main([str(trained), str(alm), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err  # 4 scored lines for 4 scored, 2 unscored for 2 invalid
    table = (out / "report.md").read_text()
    assert "| Run | JS ↓ | BC ↑ | R² ↑ | Acc. ↑ | Macro-F1 ↑ | n | Invalid | Valid |" in table
    assert "| 0.4000 | 6 | 0 | 1.0000 |" in table  # a trained model: every utterance valid
    assert "| 0.4000 (+0.0%) | 4 | 2 | 0.6667 |" in table  # 4 / (4 + 2)
    rows = {r["run"]: r for r in _rows(out / "report.csv")}
    assert (rows["alm"]["n"], rows["alm"]["invalid"]) == ("4", "2")
    assert float(rows["alm"]["valid_fraction"]) == pytest.approx(4 / 6)
    bins = [r for r in _rows(out / "entropy_bins.csv") if r["run"] == "alm"]
    assert sum(int(r["count"]) for r in bins) == 4
    kept = [i for i in range(len(TARGETS)) if i not in excluded]
    js = {i: jensenshannon(preds[i], TARGETS[i], base=2) ** 2 for i in kept}
    for row in bins:
        members = [i for i in kept if BINS[i] == int(row["bin"])]
        assert int(row["count"]) == len(members)
        if members:
            assert float(row["js_median"]) == pytest.approx(float(np.median([js[i] for i in members])), abs=1e-9)

    (alm / "test_metrics.json").write_text(json.dumps({**metrics, "invalid": 3}))
    assert main([str(trained), str(alm), "--out", str(out)]) == 0
    assert "2 unscored lines in test_predictions.jsonl, 3 invalid" in capsys.readouterr().err

"""ALMDistribution through the real CLI: every strategy on a tiny random Qwen2-Audio saved to a local directory,
the verifier against a fake Gemini endpoint, and the report over the runs.

The tiny model's answers are noise: what is checked is that each path runs, accounts for every candidate's parse,
reports validity, and writes test_metrics.json, test_predictions.jsonl and the tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gemini_fake import FakeGemini, ok
from qwen2_fixtures import tiny_qwen2_audio_dir  # noqa: F401 (the session fixture)

from ser_lightning.alm.distribution_parsing import PARSE_STRATEGIES
from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["configs/alm_test_time_scaling.yaml", "configs/debug/tiny_alm.yaml"]
BEAMS = {"base": 1, "cot": 1, "bon": 5, "wbon": 5, "verifier": 3, "wverifier": 3, "exact": 0}


def run_test(save_dir: Path, backbone: Path, strategy: str, *extra: str) -> Path:
    main(
        [
            "test",
            *[arg for c in CONFIGS for arg in ("--config", str(ROOT / c))],
            f"--model.init_args.backbone={backbone}",
            "--model.init_args.random_config=null",
            f"--model.init_args.strategy={strategy}",
            f"--data.shards={ROOT / 'shards' / 'demo'}",
            f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.logger.init_args.name=alm",
            f"--trainer.logger.init_args.version={strategy}",
            *extra,
        ]
    )
    return save_dir / "alm" / strategy


def check_run(run: Path, strategy: str) -> tuple[dict, list[dict]]:
    metrics = json.loads((run / "test_metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    scored, invalid = metrics["scored"], metrics["invalid"]  # the config's invalid_fallback: exclude (Appendix A.2)
    valid = sum(row["valid"] for row in rows)
    assert scored == metrics["test/count"] == valid > 0  # only the valid answers are scored
    assert invalid == metrics["test/excluded"] == len(rows) - valid  # every answered utterance has a line
    assert "test/fallback" not in metrics
    assert 0.0 <= metrics["test/valid_fraction"] <= 1.0
    assert 0.0 <= metrics["test/js"] <= 1.0
    candidates = sum(metrics[f"test/parse/{name}"] for name in PARSE_STRATEGIES)
    assert candidates == len(rows) * BEAMS[strategy]  # every generated candidate's parse is counted once
    assert metrics["test/valid_fraction"] == pytest.approx(valid / len(rows))
    for row in rows:
        assert len(row["target"]) == len(row["probabilities"]) == 6
        assert row["parse_strategy"] in (*PARSE_STRATEGIES, "exact")
        if row["valid"]:
            assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
            assert "scored" not in row
        else:  # left out of the metrics, the raw answer kept
            assert row["scored"] is False
            assert row["probabilities"] == [None] * 6
        if BEAMS[strategy] > 1:
            assert len(row["candidates"]) == BEAMS[strategy]
    return metrics, rows


@pytest.mark.parametrize("strategy", ["base", "cot", "bon", "wbon", "verifier", "wverifier", "exact"])
def test_every_strategy_runs_through_train_py_test(strategy, tmp_path, tiny_qwen2_audio_dir):  # noqa: F811
    run = run_test(tmp_path, tiny_qwen2_audio_dir, strategy)
    metrics, rows = check_run(run, strategy)
    if strategy == "exact":  # no generation: every answer is a distribution
        assert metrics["test/valid_fraction"] == 1.0
        assert all(row["raw"] is None for row in rows)
    if strategy in ("verifier", "wverifier"):
        asked = sum(1 for row in rows for c in row["candidates"] if c["parse_strategy"] != "invalid")
        scores = [c["verifier_score"] for row in rows for c in row["candidates"] if c["parse_strategy"] != "invalid"]
        assert metrics["test/verifier/unparseable"] + metrics["test/verifier/failures"] == scores.count(None)
        assert len(scores) == asked


def test_gemini_verifier_and_the_report(tmp_path, tiny_qwen2_audio_dir, monkeypatch):  # noqa: F811
    from ser_lightning.cli.report import main as report

    scores = iter(["0.9", "0.1", "no idea", "0.5"] * 1000)
    with FakeGemini(default=lambda received: ok(next(scores))) as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        gemini = run_test(
            tmp_path,
            tiny_qwen2_audio_dir,
            "wverifier",
            "--model.init_args.verifier_backend=gemini",
            "--model.init_args.verifier_model=gemini-test",
            '--model.init_args.verifier_options={"attempts": 1, "jitter": 0}',
        )
        metrics, rows = check_run(gemini, "wverifier")
        asked = [c for row in rows for c in row["candidates"] if c["parse_strategy"] != "invalid"]
        assert fake.count == len(asked)
        assert metrics["test/verifier/unparseable"] == sum(c["verifier_score"] is None for c in asked)
        if fake.requests:
            assert "Reply ONLY with a number between 0.0 and 1.0." in fake.requests[0].text
    base = run_test(tmp_path, tiny_qwen2_audio_dir, "base")
    out = tmp_path / "report"
    assert report([str(base), str(gemini), "--out", str(out)]) == 0
    table = (out / "report.md").read_text()
    assert "| base |" in table
    assert "| wverifier |" in table
    for run in (base, gemini):  # n scored, invalid and the valid fraction beside each row
        counts = json.loads((run / "test_metrics.json").read_text())
        fraction = counts["test/valid_fraction"]
        assert f"| {counts['scored']} | {counts['invalid']} | {fraction:.4f} |" in table
    assert (out / "entropy_bins.png").stat().st_size > 0

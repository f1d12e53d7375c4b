"""``ser-experiment``: the aggregate, the run selection and a 2-fold x 2-seed protocol on the demo shards."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

import ser_lightning.cli.train as train_cli
from ser_lightning.cli import experiment
from ser_lightning.cli.experiment import main

REPO = Path(__file__).resolve().parents[2]
DEMO = [str(REPO / "configs" / name) for name in ("demo.yaml", "debug/tiny.yaml", "debug/tiny_text.yaml")]
# per-run numbers of the fake protocol below and their aggregate worked out by hand
FAKE = {
    (0, 0): {"test/js": 0.30, "test/bin1/js": 0.10},
    (0, 1): {"test/js": 0.50, "test/bin1/js": 0.20},
    (1, 0): {"test/js": 0.40, "test/bin1/js": None},  # NaN in the run: written as null, left out
}
JS_MEAN, JS_STD = 0.40, 0.10  # mean of .3 .5 .4; sample std sqrt(((-.1)^2 + .1^2 + 0) / 2) = 0.1
BIN1_MEAN, BIN1_STD = 0.15, math.sqrt(0.005)  # .1, .2: sqrt((.05^2 + .05^2) / 1)


def fake_protocol(out: Path) -> None:
    for (fold, seed), metrics in FAKE.items():
        run = out / f"fold{fold}_seed{seed}"
        run.mkdir(parents=True)
        extra = {"test/js_ci95": [0.1, 0.2], "complete": True, "expected": 10, "reference": {"uniform_js": 0.4}}
        (run / "test_metrics.json").write_text(json.dumps({**metrics, **extra}))
    (out / "fold9_seed0").mkdir()  # an unfinished run: no metrics
    (out / "protocol.json").write_text(json.dumps({"fold_counts": [{}, {}], "seeds": 2}))


def test_aggregate_only_means_and_sample_stds(tmp_path):
    fake_protocol(tmp_path)
    assert main(["--out", str(tmp_path), "--aggregate-only"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["fold"], r["seed"]) for r in summary["runs"]] == [(0, 0), (0, 1), (1, 0)]
    assert summary["runs"][0]["metrics"] == {"test/js": 0.30, "test/bin1/js": 0.10}  # lists, nulls, counts left out
    assert summary["runs"][0]["dir"] == str(tmp_path / "fold0_seed0")
    assert set(summary["metrics"]) == {"test/js", "test/bin1/js"}
    js, bin1 = summary["metrics"]["test/js"], summary["metrics"]["test/bin1/js"]
    assert js["n"] == 3
    assert js["mean"] == pytest.approx(JS_MEAN)
    assert js["std"] == pytest.approx(JS_STD)
    assert bin1["n"] == 2
    assert bin1["mean"] == pytest.approx(BIN1_MEAN)
    assert bin1["std"] == pytest.approx(BIN1_STD)
    assert summary["missing"] == ["fold1_seed1"]
    rows = list(csv.reader((tmp_path / "summary.csv").open()))
    assert rows[0] == ["fold", "seed", "dir", "test/js", "test/bin1/js"]
    assert [r[0] for r in rows[1:]] == ["0", "0", "1", "mean", "std"]
    assert float(rows[4][3]) == pytest.approx(JS_MEAN)
    assert rows[3][4] == ""  # the null bin1 JS of fold 1
    assert "| test/js | 0.4000 ± 0.1000 | 3 |" in (tmp_path / "summary.md").read_text()


def test_aggregate_only_without_runs_fails(tmp_path):
    assert main(["--out", str(tmp_path), "--aggregate-only"]) == 1


def test_shard_takes_every_nth_run_and_runs_get_their_own_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "_run", lambda job, in_process: calls.append((job.fold, job.seed)))
    code = main(["--config", *DEMO[:1], "--folds", "2", "--seeds", "3", "--out", str(tmp_path), "--shard", "1/2"])
    assert calls == [(0, 1), (1, 0), (1, 2)]  # runs 1, 3, 5 of (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    assert code == 1  # the stub reports every run as failed
    folds = [json.loads((tmp_path / "folds" / f"fold{f}.json").read_text()) for f in range(2)]
    assert {i for f in folds for i, s in f.items() if s == "test"} == set(folds[0])  # the test folds cover all
    args = experiment.train_args(tmp_path, 1, 2, ["a.yaml"], ["--trainer.max_epochs", "3"])
    assert args[:5] == ["fit", "--config", "a.yaml", "--trainer.max_epochs", "3"]
    for flag, value in [("--seed_everything", "2"), ("--data.seed", "2"), ("--test_after_fit", "true"),
                        ("--data.split_assignment", str(tmp_path / "folds" / "fold1.json")),
                        ("--trainer.logger.init_args.version", "fold1_seed2")]:  # fmt: skip
        assert args[args.index(flag) + 1] == value


def test_overrides_ser_experiment_sets_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="set per run"):
        main(["--config", *DEMO[:1], "--folds", "2", "--out", str(tmp_path), "--data.seed", "3"])


def test_another_protocol_in_the_same_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "_run", lambda *a: True)
    monkeypatch.setattr(experiment, "_aggregate", lambda out: 0)
    assert main(["--config", *DEMO[:1], "--folds", "2", "--out", str(tmp_path)]) == 0
    with pytest.raises(SystemExit, match="another protocol"):
        main(["--config", *DEMO[:1], "--folds", "3", "--out", str(tmp_path)])


@pytest.mark.slow
def test_two_folds_two_seeds_on_the_demo_shards_and_resume(tmp_path, monkeypatch):
    """4 tiny CPU runs, then one run directory deleted: the re-run redoes only that one."""
    calls = []
    real = train_cli.main

    def counting(args):
        calls.append(args[args.index("--trainer.logger.init_args.version") + 1])
        return real(args)

    monkeypatch.setattr(train_cli, "main", counting)
    monkeypatch.chdir(REPO)
    out = tmp_path / "protocol"
    argv = ["--folds", "2", "--seeds", "2", "--out", str(out), "--in-process"]
    for config in DEMO:
        argv += ["--config", config]
    argv += ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    argv += ["--trainer.limit_test_batches", "1", "--data.max_batch_size", "2"]
    assert main(argv) == 0
    runs = ["fold0_seed0", "fold0_seed1", "fold1_seed0", "fold1_seed1"]
    assert calls == runs
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(r["dir"]).name for r in summary["runs"]] == runs
    js = [r["metrics"]["test/js"] for r in summary["runs"]]
    assert summary["metrics"]["test/js"]["mean"] == pytest.approx(sum(js) / 4)
    assert summary["missing"] == []
    for run in runs:
        assert (out / run / "config.yaml").is_file()
    assert "split_assignment" in (out / "fold1_seed0" / "config.yaml").read_text()
    kept = {r: (out / r / "test_metrics.json").stat().st_mtime_ns for r in runs}
    shutil.rmtree(out / "fold1_seed0")
    calls.clear()
    assert main(argv) == 0
    assert calls == ["fold1_seed0"]
    for run in ("fold0_seed0", "fold0_seed1", "fold1_seed1"):
        assert (out / run / "test_metrics.json").stat().st_mtime_ns == kept[run]
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 4


def test_data_settings_follow_the_configs_then_the_overrides(tmp_path):
    second = tmp_path / "b.yaml"
    second.write_text("data:\n  label_source: merged\n")
    assert experiment.data_settings([DEMO[0], str(second)], []) == (Path("shards/demo"), "merged")
    assert experiment.data_settings([DEMO[0]], ["--data.shards=x", "--data.label_source", "synthetic"]) == (
        Path("x"),
        "synthetic",
    )

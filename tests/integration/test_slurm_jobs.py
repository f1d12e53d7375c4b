"""The Slurm templates of ``scripts/slurm/`` on a real one-node cluster (``tests/slurm_cluster.py``), as users run them.

- ``fit.sbatch`` with 2 tasks trains with DDP (gloo, CPU) and its test metrics equal a 1-process test of the same
  checkpoint;
- a pre-emption notice (``scancel -s USR1``) mid-fit saves ``last.ckpt``, requeues the job, and the requeued job
  finishes in the same run directory, its best checkpoint chosen over the epochs of both segments;
- a job stopped by SIGTERM and submitted again with the same command resumes;
- ``experiment.sbatch`` as a 2-task job array runs ``ser-experiment --shard auto``, one fold per task.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_fixtures import DEMO_SHARDS, TINY_DEMO
from slurm_cluster import SlurmCluster, slurm_cluster_fixture, wait_for  # noqa: F401 (the slurm_cluster fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIT = ROOT / "scripts" / "slurm" / "fit.sbatch"
EXPERIMENT = ROOT / "scripts" / "slurm" / "experiment.sbatch"
CONFIG, OVERLAYS = TINY_DEMO[1], TINY_DEMO[2:]  # fit.sbatch takes the config first, then train.py's arguments
QUICK = [
    f"--data.shards={DEMO_SHARDS}", "--trainer.accelerator=cpu", "--data.max_batch_size=16",
    "--data.max_batch_seconds=48", "--bootstrap_samples=0",
]  # fmt: skip
TWO_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=none", "--time=00:10:00"]


def _fit_args(save_dir: Path, name: str, *extra: str) -> list[str]:
    return [CONFIG, *OVERLAYS, *QUICK, "--trainer.strategy=ddp", f"--trainer.logger.init_args.save_dir={save_dir}",
            f"--trainer.logger.init_args.name={name}", *extra]  # fmt: skip


def _submit(cluster: SlurmCluster, script: Path, out: Path, sbatch: list[str], args: list[str]) -> str:
    return cluster.submit(script, *sbatch, f"--output={out}/slurm-%j.out", script_args=args, cwd=ROOT)


def _finished(cluster: SlurmCluster, job: str, timeout: float = 300) -> str:
    """Wait for the job; its output; a failure shows the output."""
    record = cluster.wait(job, timeout=timeout)
    text = record.stdout.read_text() if record.stdout and record.stdout.exists() else ""
    assert record.state == "COMPLETED", f"{record.state} {record.exit_code}:\n{text[-4000:]}"
    return text


def _val_js(run_dir: Path) -> dict[int, float]:
    """``{step: val/js}`` over every events file of the run directory (each resumed segment adds one)."""
    values: dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val/js" in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars("val/js")})
    return values


def _last_saved(path: Path, times: int, timeout: float) -> None:
    """Wait until ``path`` has been (re)written ``times`` times (seen by its modification time)."""
    seen: list[float] = []

    def written() -> bool:
        if path.is_file() and (not seen or path.stat().st_mtime_ns != seen[-1]):
            seen.append(path.stat().st_mtime_ns)
        return len(seen) >= times

    wait_for(written, timeout, f"{path} written {times} times", interval=0.1)


def test_a_two_task_ddp_fit_tests_what_one_process_tests(slurm_cluster, tmp_path):  # noqa: F811
    args = _fit_args(tmp_path, "ddp", "--trainer.limit_val_batches=1.0", "--test_after_fit=true",
                     "--trainer.limit_test_batches=1.0")  # fmt: skip
    text = _finished(slurm_cluster, _submit(slurm_cluster, FIT, tmp_path, TWO_TASKS, args))
    assert "Traceback" not in text
    tested = json.loads((tmp_path / "ddp" / "version_0" / "test_metrics.json").read_text())
    assert tested["complete"] is True
    assert tested["scored"] == 144
    main(["test", *TINY_DEMO, *QUICK, "--trainer.limit_test_batches=1.0", f"--ckpt_path={tested['checkpoint']}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=ddp",
          "--trainer.logger.init_args.version=one"])  # fmt: skip
    single = json.loads((tmp_path / "ddp" / "one" / "test_metrics.json").read_text())
    for key in ("test/js", "test/bc", "test/r2", "test/acc", "test/f1", "test/bin1/js", "reference"):
        assert single[key] == pytest.approx(tested[key], abs=1e-6), key


def test_a_notice_requeues_and_the_run_finishes_in_its_directory_with_the_best_of_every_epoch(
    slurm_cluster, tmp_path  # noqa: F811
):
    args = _fit_args(tmp_path, "requeue", "--trainer.max_epochs=4", "--test_after_fit=true")
    job = _submit(slurm_cluster, FIT, tmp_path, TWO_TASKS, args)
    run_dir = tmp_path / "requeue" / "version_0"
    _last_saved(run_dir / "checkpoints" / "last.ckpt", times=2, timeout=240)  # two epochs done
    slurm_cluster.signal(job, "USR1")
    text = _finished(slurm_cluster, job, timeout=300)
    assert slurm_cluster.job(job).restarts == 1  # requeued once, by rank 0 after saving
    assert "SIGUSR1 at global step" in text
    assert "--ckpt_path auto: resuming" in text
    assert "Traceback" not in text
    assert [p.name for p in (tmp_path / "requeue").iterdir()] == ["version_0"]  # one run directory
    assert (run_dir / "fit_complete.json").is_file()
    values = _val_js(run_dir)
    assert len(values) == 4  # every epoch's validation, both segments, one TensorBoard run
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")  # one best file: the state of the first segment was kept
    assert float(re.search(r"js(\d\.\d{4})", best.name).group(1)) == pytest.approx(min(values.values()), abs=6e-5)
    assert json.loads((run_dir / "test_metrics.json").read_text())["checkpoint"] == str(best)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    (checkpointing,) = [v for k, v in state.items() if k.startswith("FiniteModelCheckpoint")]
    assert checkpointing["best_model_path"] == str(best)


def test_a_stopped_job_submitted_again_resumes(slurm_cluster, tmp_path):  # noqa: F811
    args = _fit_args(tmp_path, "resubmit", "--trainer.max_epochs=3")
    first = _submit(slurm_cluster, FIT, tmp_path, TWO_TASKS, args)
    run_dir = tmp_path / "resubmit" / "version_0"
    _last_saved(run_dir / "checkpoints" / "last.ckpt", times=1, timeout=240)
    slurm_cluster.signal(first, "TERM")
    record = slurm_cluster.wait(first, timeout=120)
    assert record.state != "COMPLETED"
    assert record.exit_code[0] == 143  # 128 + SIGTERM, after saving
    assert "SIGTERM at global step" in record.stdout.read_text()
    assert not (run_dir / "fit_complete.json").exists()
    text = _finished(slurm_cluster, _submit(slurm_cluster, FIT, tmp_path, TWO_TASKS, args))
    assert "--ckpt_path auto: resuming" in text
    assert [p.name for p in (tmp_path / "resubmit").iterdir()] == ["version_0"]
    assert len(_val_js(run_dir)) == 3
    assert (run_dir / "fit_complete.json").is_file()


def test_a_job_array_runs_one_share_of_the_protocol_per_task(slurm_cluster, tmp_path):  # noqa: F811
    out = tmp_path / "protocol"
    args = ["--config", CONFIG, *OVERLAYS, "--folds", "2", "--seeds", "1", "--out", str(out), *QUICK]
    array = ["--array=0-1", "--ntasks=1", "--cpus-per-task=1", "--gres=none", "--time=00:10:00"]
    job = slurm_cluster.submit(EXPERIMENT, *array, f"--output={tmp_path}/slurm-%A_%a.out", script_args=args, cwd=ROOT)
    record = slurm_cluster.wait(job, timeout=300)
    outputs = "".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))
    assert {t.state for t in record.tasks} == {"COMPLETED"}, outputs[-4000:]
    assert "Slurm array task 0 of 2" in outputs
    assert "Slurm array task 1 of 2" in outputs
    for fold in (0, 1):
        assert (out / f"fold{fold}_seed0" / "test_metrics.json").is_file()
    assert len(json.loads((out / "summary.json").read_text())["runs"]) >= 1  # each task aggregates at its end

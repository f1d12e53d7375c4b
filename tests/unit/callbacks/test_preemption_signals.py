"""The pre-emption callback's parts that need no cluster: notice signals, the job to requeue, a refused requeue."""

from __future__ import annotations

import signal

import pytest

from ser_lightning.callbacks.preemption import PreemptionCheckpoint, notice_signals, requeue, slurm_job_id
from ser_lightning.cli.experiment import slurm_array_shard


def test_notice_signals_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("SER_LIGHTNING_PREEMPT_SIGNALS", raising=False)
    assert notice_signals() == (signal.SIGUSR1, signal.SIGUSR2)
    monkeypatch.setenv("SER_LIGHTNING_PREEMPT_SIGNALS", "sigusr2")
    assert notice_signals() == (signal.SIGUSR2,)
    assert PreemptionCheckpoint().notices == (signal.SIGUSR2,)
    with pytest.raises(ValueError, match="unknown signal 'NOPE'"):
        notice_signals("USR1,nope")


def test_the_job_to_requeue_is_the_array_task_or_the_job(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert slurm_job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert slurm_job_id() == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "40_3"


def test_a_requeue_outside_slurm_or_without_scontrol_is_logged_not_raised(monkeypatch, caplog):
    assert requeue(None) is False
    monkeypatch.setenv("PATH", "/nonexistent")
    assert requeue("12") is False
    assert "could not requeue Slurm job 12" in caplog.text


def test_shard_auto_reads_the_array_task(monkeypatch):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    assert slurm_array_shard() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    assert slurm_array_shard() == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    with pytest.raises(SystemExit, match="not in 0..3"):
        slurm_array_shard()

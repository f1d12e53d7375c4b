"""Driving a Slurm cluster from tests: submitting, waiting for, signalling and requeueing jobs; their records.

:class:`SlurmJobs` holds the client side that :class:`slurm_cluster.SlurmCluster` (the daemons' side) adds to:
every call goes through the cluster's ``SLURM_CONF`` and is bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal as signal_module
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Job states after which a job (or array task) will not run again unless requeued.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

#: Environment prefixes of an enclosing Slurm job (or the user's shell) that must not leak into the test cluster.
_FOREIGN_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SCANCEL_", "SINFO_", "SCONTROL_")

#: Where the daemons and client binaries may be when ``PATH`` lacks the sbin directories.
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin")


class SlurmError(RuntimeError):
    """A Slurm daemon or client command failed, or a wait ran out; the message carries the daemons' log tails."""


class JobRecord(dict[str, str]):
    """One ``scontrol show job -o`` record (``JobState``, ``ExitCode``, ``Restarts``, ``StdOut``, ...) as a dict.

    ``tasks`` holds every record the job id names: itself for a plain job, all array tasks (ordered by
    ``ArrayTaskId``) for an array job, whose own record is then the one whose ``JobId`` is the array's id.
    """

    def __init__(self, fields: Mapping[str, str], tasks: Sequence[JobRecord] = ()) -> None:
        super().__init__(fields)
        self.tasks: list[JobRecord] = list(tasks) or [self]

    @property
    def job_id(self) -> str:
        """``JobId``."""
        return self["JobId"]

    @property
    def state(self) -> str:
        """``JobState`` (e.g. ``COMPLETED``)."""
        return self.get("JobState", "")

    @property
    def exit_code(self) -> tuple[int, int]:
        """``ExitCode`` as ``(exit status, signal)``."""
        status, _, sig = self.get("ExitCode", "0:0").partition(":")
        return int(status or 0), int(sig or 0)

    @property
    def restarts(self) -> int:
        """``Restarts``: how often the job was requeued."""
        return int(self.get("Restarts", "0") or 0)

    @property
    def stdout(self) -> Path | None:
        """``StdOut`` as a path (with ``%j``-style patterns already expanded by Slurm), if any."""
        value = self.get("StdOut", "")
        return Path(value) if value and value != "(null)" else None

    @property
    def stderr(self) -> Path | None:
        """``StdErr`` as a path, if any."""
        value = self.get("StdErr", "")
        return Path(value) if value and value != "(null)" else None

    @property
    def array_task_id(self) -> int | None:
        """``ArrayTaskId`` of a single array task, or None (plain job, or a still unsplit pending range)."""
        value = self.get("ArrayTaskId", "")
        return int(value) if value.isdigit() else None


_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_:/.()\-]*$")


def parse_record(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` line of ``Key=Value`` fields (a token with no key extends the last value)."""
    fields: dict[str, str] = {}
    last: str | None = None
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep and _KEY_RE.match(key):
            fields[key] = value
            last = key
        elif last is not None:
            fields[last] = f"{fields[last]} {token}"
    return fields


def _signal_name(sig: int | str | signal_module.Signals) -> str:
    if isinstance(sig, str):
        name = sig.upper()
        return name[3:] if name.startswith("SIG") else name
    return signal_module.Signals(sig).name.removeprefix("SIG")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy and return it; :class:`TimeoutError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def which(name: str) -> str | None:
    """``shutil.which``, also looking in the sbin directories (a non-login shell's ``PATH`` may lack them)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


class SlurmJobs:
    """The client commands of a cluster; a subclass provides ``conf_path``, ``jobs_dir`` and ``_error``."""

    conf_path: Path

    @property
    def jobs_dir(self) -> Path:
        """The default working directory of jobs."""
        raise NotImplementedError

    def _error(self, message: str) -> SlurmError:
        raise NotImplementedError

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """``os.environ`` without any enclosing Slurm job's variables, with ``SLURM_CONF`` for this cluster.

        Pass it to any subprocess that runs Slurm commands; ``extra`` is laid over it.
        """
        env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        *cmd: str | os.PathLike[str],
        timeout: float = 30.0,
        check: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``run("scontrol", "show", "node")``) against this cluster, text output captured.

        Raises:
            SlurmError: with ``check``, when it exits non-zero or runs past ``timeout`` (stdout, stderr, log tails).
        """
        argv = [os.fspath(part) for part in cmd]
        argv[0] = which(argv[0]) or argv[0]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=self.env(env),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            if not check:
                return subprocess.CompletedProcess(argv, 124, _text(err.stdout), _text(err.stderr))
            raise self._error(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
        if check and result.returncode != 0:
            raise self._error(
                f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout.strip()}\n"
                f"stderr: {result.stderr.strip()}"
            )
        return result

    def submit(
        self,
        script: str | os.PathLike[str],
        *sbatch_args: str,
        script_args: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Submit a batch script with ``sbatch --parsable`` and return its job id (``"12"``).

        Args:
            script: a path (``os.PathLike``, or a ``str`` naming an existing file), or the script's text (a ``str``
                with a newline), which is written to a new file under :attr:`jobs_dir`.
            sbatch_args: extra ``sbatch`` options, placed before the script (they override its ``#SBATCH`` lines).
            script_args: the script's own arguments, placed after it.
            cwd: the job's working directory (sbatch's cwd); default :attr:`jobs_dir`.
            env: variables laid over :meth:`env` for sbatch, hence for the job (sbatch exports its environment).
            timeout: bound on the ``sbatch`` call.
        """
        if isinstance(script, str) and "\n" in script:
            handle, name = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.jobs_dir)
            with os.fdopen(handle, "w") as fh:
                fh.write(script)
            path = Path(name)
            path.chmod(0o755)
        else:
            path = Path(script)
            if not path.is_file():
                raise FileNotFoundError(f"no batch script at {path} (pass the text with a newline to submit text)")
        workdir = Path(cwd) if cwd is not None else self.jobs_dir
        out = self.run(
            "sbatch", "--parsable", *sbatch_args, path.resolve(), *script_args, cwd=workdir, env=env, timeout=timeout
        )
        job_id = out.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise self._error(f"sbatch printed no job id: {out.stdout!r} {out.stderr!r}")
        return job_id

    def records(self, job_id: str | int) -> list[JobRecord]:
        """Every ``scontrol show job -o`` record for ``job_id`` (one, or one per array task / pending range).

        Raises:
            SlurmError: the controller does not know the job.
        """
        result = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=15)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if result.returncode != 0 or not lines:
            raise self._error(f"scontrol show job {job_id} failed: {result.stdout.strip()} {result.stderr.strip()}")
        recs = [JobRecord(parse_record(line)) for line in lines]
        return sorted(recs, key=lambda r: (r.array_task_id is None, r.array_task_id or 0, int(r.job_id)))

    def job(self, job_id: str | int) -> JobRecord:
        """The job's record, with :attr:`JobRecord.tasks` listing all of an array's tasks."""
        recs = self.records(job_id)
        main = next((r for r in recs if r.job_id == str(job_id)), recs[0])
        return JobRecord(main, recs)

    def state(self, job_id: str | int) -> str:
        """``JobState`` of a job (or of ``"ID_TASK"``); for an array, its tasks' distinct states joined by ``,``."""
        return ",".join(sorted({rec.state for rec in self.records(job_id)}))

    def wait(
        self,
        job_id: str | int,
        timeout: float = 120.0,
        states: Collection[str] = TERMINAL_STATES,
        interval: float = 0.25,
    ) -> JobRecord:
        """Poll until every record of the job (every array task) is in one of ``states``; return :meth:`job`.

        ``states`` defaults to the terminal states; pass e.g. ``{"RUNNING"}`` to wait for a start. A pending,
        unsplit array range counts as one record in ``PENDING``, so an array only passes once all tasks did.

        Raises:
            SlurmError: ``timeout`` ran out (the message has the last records and the log tails).
        """
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(job_id)
            if all(rec.state in wanted for rec in recs):
                main = next((r for r in recs if r.job_id == str(job_id)), recs[0])
                return JobRecord(main, recs)
            if time.monotonic() >= deadline:
                summary = "\n".join(
                    f"JobId={r.job_id} ArrayTaskId={r.get('ArrayTaskId', '-')} JobState={r.state} "
                    f"Reason={r.get('Reason', '')} Restarts={r.restarts}"
                    for r in recs
                )
                raise self._error(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s:\n{summary}")
            time.sleep(interval)

    def signal(
        self, job_id: str | int, sig: int | str | signal_module.Signals, *, batch: bool = False, full: bool = False
    ) -> None:
        """``scancel -s SIG JOBID``: by default to the job's steps (the ``srun`` tasks), not the batch shell.

        ``batch`` adds ``--batch`` (the batch shell alone: not its children, not the steps); ``full`` adds ``--full``
        (the batch shell, its children and the steps). Like ``scancel -s``, this leaves the job's state unchanged.
        """
        args = ["scancel", "-s", _signal_name(sig)]
        if batch:
            args.append("--batch")
        if full:
            args.append("--full")
        self.run(*args, str(job_id))

    def cancel(self, job_id: str | int) -> None:
        """``scancel JOBID``: SIGTERM, then SIGKILL after ``KillWait``."""
        self.run("scancel", str(job_id))

    def requeue(self, job_id: str | int, *, hold: bool = False) -> None:
        """``scontrol requeue JOBID`` (``requeuehold`` with ``hold``); the job may start again after ``cred_expire``."""
        self.run("scontrol", "requeuehold" if hold else "requeue", str(job_id))


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value

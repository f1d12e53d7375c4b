"""A real one-node Slurm cluster (Debian's ``slurm-wlm`` + ``munge``) on 127.0.0.1, for integration tests.

Import it by name from any test module (``tests/`` is on ``sys.path``, as for ``shard_fixtures``)::

    from slurm_cluster import SlurmCluster, slurm_cluster_fixture  # noqa: F401 (the fixture `slurm_cluster`)

    def test_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
        job = slurm_cluster.submit("#!/bin/bash\\necho hi\\n", "--output=out.txt", cwd=tmp_path)
        record = slurm_cluster.wait(job, timeout=60)
        assert record.state == "COMPLETED"

The fixture ``slurm_cluster`` (module scope; its function is :func:`slurm_cluster_fixture`) skips when the
Slurm/munge binaries are missing or the tests do not run as root (``scripts/slurm/ci_setup.sh`` installs them), and
otherwise starts its own ``munged``, ``slurmctld`` and ``slurmd`` in the foreground, as child processes, with a
generated ``slurm.conf`` and munge key in a temporary directory: nothing under ``/etc`` is read or written (the client
commands find the cluster through ``SLURM_CONF``, which :meth:`SlurmCluster.env` sets), the ports are picked free, and
teardown stops every daemon and every process still carrying the cluster's ``SLURM_CONF`` (the job steps), also when a
test failed.

Every subprocess call and every polling loop is bounded in time; failures raise :class:`SlurmError` with the tails of
the daemons' logs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import shutil
import signal as signal_module
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from slurm_jobs import SlurmError, SlurmJobs, parse_record, wait_for, which

#: Binaries the fixture needs; any missing one makes it skip.
REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


# AF_UNIX socket paths are limited to 107 bytes; Slurm puts step sockets under the spool directory.
_MAX_RUNTIME_DIR_CHARS = 60

# the generated slurm.conf: {placeholders} filled in by SlurmCluster._write_config
_CONF_TEMPLATE = (Path(__file__).with_name("slurm.conf.template")).read_text(encoding="utf-8")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"<{path}: {err.strerror}>"
    return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster (a missing binary, not root), or None when it can."""
    missing = [name for name in REQUIRED_BINARIES if which(name) is None]
    if missing:
        return f"Slurm/munge binaries not installed: {', '.join(missing)} (run scripts/slurm/ci_setup.sh as root)"
    if os.geteuid() != 0:
        return "the Slurm test cluster runs its daemons as root (SlurmUser=root); these tests are not running as root"
    return None


def _detect_node() -> tuple[int, int]:
    """``(CPUs, RealMemory MiB)`` as ``slurmd -C`` reports them, falling back to ``os.cpu_count()`` and 1 GiB."""
    cpus, memory = os.cpu_count() or 1, 1024
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        fields = parse_record(out.splitlines()[0]) if out.strip() else {}
        cpus = int(fields.get("CPUs", cpus))
        memory = int(fields.get("RealMemory", memory))
    return cpus, memory


def _die_with_parent() -> None:
    """In the forked child before exec: ask Linux for SIGTERM when the test process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_module.SIGTERM, 0, 0, 0)


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


@dataclasses.dataclass
class SlurmCluster(SlurmJobs):
    """A running one-node cluster: its config, directories and daemons, and helpers to drive it.

    Build it with :meth:`start` (or the ``slurm_cluster`` fixture), stop it with :meth:`stop`.
    """

    base_dir: Path
    runtime_dir: Path
    conf_path: Path
    node_name: str
    partition: str
    cpus: int
    slurmctld_port: int
    slurmd_port: int
    processes: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    _owns_runtime_dir: bool = False

    # ----------------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        base_dir: Path,
        *,
        cpus: int | None = None,
        kill_wait: int = 3,
        cred_expire: int = 10,
        debug: str = "verbose",
        first_job_id: int | None = None,
        timeout: float = 60.0,
    ) -> SlurmCluster:
        """Write the config under ``base_dir``, start munged, slurmctld and slurmd, and wait for the node to be idle.

        Args:
            base_dir: an empty, private directory for the config, state, logs (``log/``) and job files (``jobs/``).
            cpus: the node's CPU count; default ``max(2, CPUs reported by slurmd -C)`` (``config_overrides`` lets
                the node claim more CPUs than the machine has, so two one-CPU tasks always fit).
            kill_wait: ``KillWait``: seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
            cred_expire: ``AuthInfo=cred_expire`` (minimum 5): also how long a requeued job waits before it may run.
            debug: ``SlurmctldDebug``/``SlurmdDebug`` level.
            first_job_id: ``FirstJobId``; default random in [100000, 1000000), so that two clusters running at once
                (parallel test sessions) hand out different job ids, hence different Lightning ports
                (``MASTER_PORT = 15000 + the job id's last 4 digits``).
            timeout: the bound on each daemon's start-up and on the node turning idle.

        Raises:
            SlurmError: a daemon did not come up in time (the message has the log tails); the daemons that did
                start are stopped first.
        """
        base_dir = Path(base_dir).resolve()
        if len(str(base_dir)) <= _MAX_RUNTIME_DIR_CHARS:
            runtime_dir, owns_runtime = base_dir / "run", False
            runtime_dir.mkdir(parents=True, exist_ok=True)
        else:
            runtime_dir, owns_runtime = Path(tempfile.mkdtemp(prefix="slurm-test-")), True
        detected_cpus, memory = _detect_node()
        cluster = cls(
            base_dir=base_dir,
            runtime_dir=runtime_dir,
            conf_path=base_dir / "slurm.conf",
            node_name=_short_hostname(),
            partition="debug",
            cpus=cpus if cpus is not None else max(2, detected_cpus),
            slurmctld_port=_free_port(),
            slurmd_port=_free_port(),
            _owns_runtime_dir=owns_runtime,
        )
        try:
            cluster._write_config(
                memory=memory,
                kill_wait=kill_wait,
                cred_expire=cred_expire,
                debug=debug,
                first_job_id=first_job_id if first_job_id is not None else random.randrange(100_000, 1_000_000),
            )
            cluster._start_munged(timeout)
            cluster._start_slurmctld(timeout)
            cluster._start_slurmd(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel all jobs, shut the daemons down (SIGTERM, then SIGKILL) and kill any leftover job process.

        Safe to call more than once and on a half-started cluster; never raises for a daemon that is already gone.
        """
        deadline = time.monotonic() + timeout
        if self._alive("slurmctld"):
            with contextlib.suppress(Exception):
                self.run("scancel", f"--partition={self.partition}", timeout=10, check=False)
                wait_for(lambda: not self.run("squeue", "-h", timeout=10, check=False).stdout.strip(), 10, "jobs")
            with contextlib.suppress(Exception):
                self.run("scontrol", "shutdown", timeout=10, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.get(name)
            if proc is None:
                continue
            if name != "munged":  # `scontrol shutdown` stops the Slurm daemons; munged only stops on a signal
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.5, min(10.0, deadline - time.monotonic())))
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._kill_strays()
        if self._owns_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def _alive(self, name: str) -> bool:
        proc = self.processes.get(name)
        return proc is not None and proc.poll() is None

    def _kill_strays(self) -> None:
        """SIGKILL every process (slurmstepd, job scripts, srun tasks) whose environment names this cluster's config."""
        marker = f"SLURM_CONF={self.conf_path}".encode()
        own = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == own:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal_module.SIGKILL)

    # ----------------------------------------------------------------------------------------------- paths

    @property
    def log_dir(self) -> Path:
        """Where the daemons' logs are (``munged.log``, ``slurmctld.log``, ``slurmd.log``, and their stdout/err)."""
        return self.base_dir / "log"

    @property
    def jobs_dir(self) -> Path:
        """Default working directory of submitted jobs, and where script texts are written."""
        return self.base_dir / "jobs"

    @property
    def munge_socket(self) -> Path:
        """The private munged's socket (``AuthInfo=socket=...``)."""
        return self.runtime_dir / "munge.socket"

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each daemon log, for error messages."""
        parts = []
        for daemon in ("slurmctld", "slurmd", "munged"):
            # the log file proper, then the daemon's stdout/stderr (fatal start-up errors land only there)
            for name, count in ((f"{daemon}.log", lines), (f"{daemon}.out", min(lines, 10))):
                if (self.log_dir / name).exists():
                    parts.append(f"--- {self.log_dir / name} ---\n{_tail(self.log_dir / name, count)}")
        return "\n".join(parts)

    def _error(self, message: str) -> SlurmError:
        return SlurmError(f"{message}\n{self.log_tails()}")

    # ----------------------------------------------------------------------------------------------- start-up

    def _write_config(self, *, memory: int, kill_wait: int, cred_expire: int, debug: str, first_job_id: int) -> None:
        for directory in (self.base_dir / "state", self.runtime_dir / "spool", self.log_dir, self.jobs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        plugstack = self.base_dir / "plugstack.conf"
        plugstack.write_text("")
        self.conf_path.write_text(
            _CONF_TEMPLATE.format(
                cluster_name="testcluster",
                first_job_id=first_job_id,
                controller_host=self.node_name,
                slurmctld_port=self.slurmctld_port,
                slurmd_port=self.slurmd_port,
                munge_socket=self.munge_socket,
                cred_expire=max(5, cred_expire),
                state_dir=self.base_dir / "state",
                spool_dir=self.runtime_dir / "spool",
                run_dir=self.runtime_dir,
                log_dir=self.log_dir,
                debug=debug,
                plugstack=plugstack,
                kill_wait=kill_wait,
                node_name=self.node_name,
                cpus=self.cpus,
                real_memory=memory,
                partition=self.partition,
            )
        )

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        out = (self.log_dir / f"{name}.out").open("wb")
        try:
            proc = subprocess.Popen(
                [which(argv[0]) or argv[0], *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.base_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self.processes[name] = proc
        return proc

    def _wait_daemon(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        def check() -> bool:
            if not self._alive(name):
                raise self._error(f"{name} exited during start-up (rc={self.processes[name].returncode})")
            return ready()

        try:
            wait_for(check, timeout, f"{name} to start")
        except TimeoutError as err:
            raise self._error(str(err)) from None

    def _start_munged(self, timeout: float) -> None:
        key = self.runtime_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.runtime_dir.chmod(0o755)  # munged wants the socket's directory to be searchable by everyone
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.runtime_dir / 'munged.pid'}",
                f"--seed-file={self.runtime_dir / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
            ],
        )
        self._wait_daemon("munged", self.munge_socket.exists, timeout)

    def _start_slurmctld(self, timeout: float) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf_path)])

        def up() -> bool:
            out = self.run("scontrol", "ping", timeout=10, check=False).stdout
            return " is UP" in out

        self._wait_daemon("slurmctld", up, timeout)

    def _start_slurmd(self, timeout: float) -> None:
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node_name, "-f", str(self.conf_path)])

        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10, check=False).stdout.split()
            return out == ["idle"]

        self._wait_daemon("slurmd", idle, timeout)


@contextlib.contextmanager
def running_cluster(base_dir: Path, **options: Any) -> Iterator[SlurmCluster]:
    """Context manager around :meth:`SlurmCluster.start` / :meth:`SlurmCluster.stop` (options go to ``start``)."""
    cluster = SlurmCluster.start(base_dir, **options)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", name="slurm_cluster")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The fixture ``slurm_cluster``: a running one-node cluster for the test module, or a skip (no Slurm, not root).

    Import this function into a test module (``from slurm_cluster import slurm_cluster_fixture  # noqa: F401``) and
    take ``slurm_cluster: SlurmCluster`` as an argument; the Python name differs from the fixture name so that
    ruff's F811 does not fire on every test.
    """
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster

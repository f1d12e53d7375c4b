"""The ``slurm_cluster`` fixture itself: a real one-node Slurm cluster runs batch, srun, array and requeued jobs.

Skipped where Slurm/munge are not installed or the tests do not run as root (``scripts/slurm/ci_setup.sh``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, parse_record, slurm_cluster_fixture, wait_for  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

PYTHON = shlex.quote(sys.executable)


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


def test_client_commands_see_the_cluster(slurm_cluster: SlurmCluster) -> None:
    env = slurm_cluster.env()
    assert env["SLURM_CONF"] == str(slurm_cluster.conf_path)
    assert Path(env["SLURM_CONF"]).is_file()
    node = parse_record(slurm_cluster.run("scontrol", "show", "node", "-o", slurm_cluster.node_name).stdout)
    assert node["State"] in {"IDLE", "MIXED", "ALLOCATED"}, node
    assert node["CPUTot"] == str(slurm_cluster.cpus)
    assert slurm_cluster.cpus >= 2
    partitions = slurm_cluster.run("sinfo", "-h", "-o", "%P %a").stdout.split()
    assert partitions == [f"{slurm_cluster.partition}*", "up"]


def test_one_task_job_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = "#!/bin/bash\n#SBATCH --output=out-%j.txt\necho hello from $SLURM_JOB_ID\necho $SLURM_CONF\n"
    job = slurm_cluster.submit(script, cwd=tmp_path)
    record = slurm_cluster.wait(job, timeout=60)
    assert record.state == "COMPLETED"
    assert record.exit_code == (0, 0)
    assert record.restarts == 0
    assert record.stdout == tmp_path / f"out-{job}.txt"
    # the job inherits SLURM_CONF, so Slurm commands inside it (Lightning's `scontrol requeue`) reach this cluster
    assert record.stdout.read_text() == f"hello from {job}\n{slurm_cluster.conf_path}\n"
    assert slurm_cluster.state(job) == "COMPLETED"


def test_failing_job_reports_its_exit_code(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.submit("#!/bin/bash\nexit 3\n", "--output=fail.txt", cwd=tmp_path)
    record = slurm_cluster.wait(job, timeout=60)
    assert record.state == "FAILED"
    assert record.exit_code == (3, 0)


def test_two_task_srun_runs_both_tasks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = f"""#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --output=srun.txt
srun {PYTHON} -c "import os; print(os.environ['SLURM_PROCID'], os.environ['SLURM_NTASKS'])"
"""
    record = slurm_cluster.wait(slurm_cluster.submit(script, cwd=tmp_path), timeout=60)
    assert record.state == "COMPLETED", (tmp_path / "srun.txt").read_text()
    assert record["NumTasks"] == "2"
    assert sorted((tmp_path / "srun.txt").read_text().splitlines()) == ["0 2", "1 2"]


def test_array_job_runs_both_tasks_at_once(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # each task waits (bounded) for the other's file: both one-CPU tasks must run at the same time
    script = """#!/bin/bash
#SBATCH --array=0-1
#SBATCH --output=arr-%A_%a.txt
echo $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_JOB_ID > task-$SLURM_ARRAY_TASK_ID.txt
other=task-$((1 - SLURM_ARRAY_TASK_ID)).txt
for _ in $(seq 100); do [ -e "$other" ] && exit 0; sleep 0.2; done
echo "never saw $other" >&2
exit 1
"""
    job = slurm_cluster.submit(script, cwd=tmp_path)
    record = slurm_cluster.wait(job, timeout=90)
    assert [task.array_task_id for task in record.tasks] == [0, 1]
    assert [task.state for task in record.tasks] == ["COMPLETED", "COMPLETED"], [task.stdout for task in record.tasks]
    assert {task["ArrayJobId"] for task in record.tasks} == {job}
    for task_id in (0, 1):
        assert _lines(tmp_path / f"task-{task_id}.txt") == [str(task_id), "2", job]
        assert (tmp_path / f"arr-{job}_{task_id}.txt").exists()


def test_requeued_job_restarts_and_finishes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=requeue.txt
echo "restart=${SLURM_RESTART_COUNT:-unset}" >> runs.txt
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
    touch started
    sleep 60
    exit 7
fi
"""
    job = slurm_cluster.submit(script, cwd=tmp_path)
    wait_for((tmp_path / "started").exists, 60, "the first run to start")
    slurm_cluster.requeue(job)
    record = slurm_cluster.wait(job, timeout=90)
    assert record.state == "COMPLETED"
    assert record.exit_code == (0, 0)
    assert record.restarts == 1
    assert _lines(tmp_path / "runs.txt") == ["restart=unset", "restart=1"]


def test_scancel_usr1_reaches_the_srun_tasks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "task.py").write_text(
        """import os, signal, sys, time
from pathlib import Path

rank = os.environ["SLURM_PROCID"]
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
Path(f"ready-{rank}").touch()
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.1)
if not got:
    sys.exit("no SIGUSR1 within 60 s")
Path(f"usr1-{rank}").write_text(str(got[0]))
"""
    )
    script = f"""#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --output=signal.txt
srun {PYTHON} task.py
echo batch survived
"""
    job = slurm_cluster.submit(script, cwd=tmp_path)
    wait_for(lambda: all((tmp_path / f"ready-{rank}").exists() for rank in (0, 1)), 60, "both tasks to be ready")
    slurm_cluster.signal(job, "USR1")
    record = slurm_cluster.wait(job, timeout=60)
    assert record.state == "COMPLETED", (tmp_path / "signal.txt").read_text()
    for rank in (0, 1):
        assert (tmp_path / f"usr1-{rank}").read_text() == "10"  # SIGUSR1 on Linux
    assert "batch survived" in (tmp_path / "signal.txt").read_text()

"""The shipped Slurm job script (deploy/slurm/hpsearch-workers.sbatch) under a real Slurm.

A single-node Slurm (Debian's slurm-wlm: slurmctld, slurmd) and munge are started as root in a
temporary folder on free loopback ports; an `sbatch --array` of three workers runs a dry-run
study on PostgreSQL; one array task is scancelled mid-trial. Skipped, loudly, only where Slurm
cannot start (not installed, not root). .ci/run installs slurm-wlm and munge.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from hpsearch.api import create_study
from tests.helpers import epoch_numbers, stored_trials, wait_for
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "hpsearch-workers.sbatch"
pytestmark = [pytest.mark.slurm, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cannot_start() -> str | None:
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(b)]
    if missing:
        return (f"SLURM NOT TESTED: {', '.join(missing)} not installed "
                "(apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "SLURM NOT TESTED: slurmd must run as root to start jobs"
    return None


class Slurm:
    """munged + slurmctld + slurmd of a one-node cluster in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        host = socket.gethostname().split(".")[0]
        key, sock = self.root / "munge.key", self.root / "munge.sock"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._spawn(["munged", "--foreground", "--force", f"--key-file={key}",
                     f"--socket={sock}", f"--pid-file={self.root / 'munged.pid'}",
                     f"--log-file={self.root / 'munged.log'}",
                     f"--seed-file={self.root / 'munged.seed'}"])
        wait_for(sock.exists, 20, "munged's socket")
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        self.conf.write_text(f"""
ClusterName=hpstest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'slurmctld.log'}
SlurmdLogFile={self.root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn(["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf)])

        def idle() -> bool:
            done = self.run("sinfo", "-h", "-o", "%T", check=False)
            return done.returncode == 0 and done.stdout.strip() == "idle"
        wait_for(idle, 60, "the Slurm node to be idle")

    def _spawn(self, command: list[str]) -> None:
        log = open(self.root / f"{command[0]}.out", "wb")  # noqa: SIM115 - lives with the process
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, cwd=self.root))

    def run(self, *command: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(command), env={**self.env, **(env or {})}, check=check,
                              capture_output=True, text=True, timeout=60)

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """wait_for, with the daemons' logs in the failure."""
        try:
            wait_for(condition, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[Slurm]:
    reason = _cannot_start()
    if reason:
        pytest.skip(reason)
    cluster = Slurm(tmp_path / "slurm")
    cluster.root.mkdir()
    try:
        cluster.start()
    except Exception as exc:  # said loudly, with the daemons' logs
        cluster.stop()
        pytest.skip(f"SLURM NOT TESTED: it did not start ({exc})\n{cluster.logs()}")
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--user=root", check=False)
        cluster.stop()


def test_an_sbatch_array_finishes_a_study_and_a_scancelled_task_is_retried(
        slurm: Slurm, pg_url: str, tmp_path: Path) -> None:
    path = write_tiny_study(tmp_path, n_trials=6, epochs=6, dry_run=1.0, heartbeat=(1, 4))
    create_study(path, pg_url)
    logs = tmp_path / "hps-logs"
    logs.mkdir()
    env = {"HPSEARCH_DB": pg_url, "HPSEARCH_VENV": sys.prefix, "PYTHONPATH": str(ROOT)}
    job = slurm.run("sbatch", "--parsable", "--array=0-2", "--cpus-per-task=1", "--mem=500M",
                    "--time=10", f"--output={logs}/worker-%A_%a.log", str(SBATCH), "tiny",
                    env=env).stdout.strip().split(";")[0]

    def mid_trial() -> bool:  # every task has a trial with an epoch stored
        running = [t for t in stored_trials(pg_url, "tiny") if t.state == "running"]
        return len(running) == 3 and all(t.epochs_run >= 1 for t in running)
    slurm.wait(mid_trial, 120, "three array tasks mid-trial")
    slurm.run("scancel", f"{job}_1")

    def job_done() -> bool:
        return not slurm.run("squeue", "-h", "-j", job, check=False).stdout.strip()
    slurm.wait(job_done, 180, "the array job to finish")

    task_log = (logs / f"worker-{job}_1.log").read_text()
    assert "stopped by SIGTERM" in task_log, task_log
    trials = stored_trials(pg_url, "tiny")
    (stopped,) = [t for t in trials if t.state == "failed"]
    assert stopped.reason == "interrupted (SIGTERM)"
    assert 1 <= stopped.epochs_run < 6  # mid-trial
    (retry,) = [t for t in trials if t.retried_from == stopped.number]
    # dry-run trials keep no checkpoint: the retry runs all its epochs again
    assert (retry.state, retry.epochs_run, retry.params) == ("complete", 6, stopped.params)
    finished = [t for t in trials if t.state in ("complete", "pruned")]
    assert len(finished) == 6 and len(trials) == 7  # nothing lost, no surplus
    for trial in finished:
        assert epoch_numbers(pg_url, trial.id) == list(range(1, trial.epochs_run + 1))
    frozen = optuna.load_study(study_name="tiny", storage=pg_url).get_trials(deepcopy=False)
    assert sorted(t._trial_id for t in frozen) == sorted(t.optuna_trial_id for t in trials)
    # the other two tasks ran until the study was complete
    for index in (0, 2):
        assert "worker done:" in (logs / f"worker-{job}_{index}.log").read_text()

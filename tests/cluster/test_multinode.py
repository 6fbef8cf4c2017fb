"""A two-node Ray cluster on this machine (`ray start --head` and a second `ray start` joining it,
on 127.0.0.1, one CPU each), used as a laptop uses a cluster: jobs go in with `ray job submit
--working-dir .`. A training job spans both nodes; the second node is killed mid-run, a fresh
node joins, and the run finishes from its last checkpoint (Ray Train fault tolerance)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from benchmarks.common import free_port

BIN = os.path.dirname(sys.executable)


class LocalCluster:
    """Nodes started with `ray start --block`, each in its own process group."""

    def __init__(self) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled",
                        SLIPWAY_PROGRESS="0", RAY_health_check_period_ms="1000",
                        RAY_health_check_failure_threshold="3")
        self.nodes: list[subprocess.Popen] = []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, head: bool = False) -> subprocess.Popen:
        # Each node its own temp dir, as on separate machines (nodes sharing one would share
        # their runtime-env folders, and one node's agent would replace the job's working dir
        # under the other's driver); short, for the socket paths inside.
        temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        args = [f"{BIN}/ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--object-store-memory=400000000", "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}"]
        if head:
            args += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address=127.0.0.1:{self.gcs_port}"]
        proc = subprocess.Popen(args, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes.append(proc)
        return proc

    def alive_nodes(self) -> list[str]:
        from ray.util.state import list_nodes

        return [n.node_id for n in list_nodes(address=self.dashboard, raise_on_missing_output=False)
                if n.state == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                alive = self.alive_nodes()
                if len(alive) == count:
                    return alive
            except Exception:  # the dashboard is still starting
                pass
            time.sleep(1)
        raise AssertionError(f"the cluster did not reach {count} alive nodes")

    def kill(self, proc: subprocess.Popen) -> None:
        """Stop a node and everything it started at once, as a lost machine would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def stop(self) -> None:
        """Stop every node as Ctrl-C stops `ray start --block`; SIGKILL what lingers."""
        for proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: `ray start --block` stops its processes
        for proc in self.nodes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)

    def submit(self, job_id: str, *entrypoint: str, wait: bool = True
               ) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir .` from the repository, as from a laptop."""
        return subprocess.run([f"{BIN}/ray", "job", "submit", f"--address={self.dashboard}",
                               f"--submission-id={job_id}", "--working-dir", ".",
                               *([] if wait else ["--no-wait"]), "--", *entrypoint],
                              env=self.env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()
    local.start_node(head=True)
    local.wait_for_nodes(1)
    local.start_node()
    local.wait_for_nodes(2)
    yield local
    local.stop()


def wait_for_job(cluster: LocalCluster, job_id: str, timeout_s: float = 480) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(2)
    return status


def test_submitted_jobs_span_both_nodes_and_training_survives_a_lost_node(cluster, tmp_path,
                                                                          platform_root):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    # The platform's curated events and features (on this machine's disk, as on a shared
    # filesystem); the job writes its checkpoints and model under a root of its own.
    root = str(tmp_path / "root")
    for folder in ("curated/events", "features", "feature_repo"):
        shutil.copytree(f"{platform_root}/{folder}", f"{root}/{folder}")

    # Training on two workers, one CPU each: one worker per node. Checkpoints every epoch.
    job = cluster.submit("train", "python", "-m", "jobs.train",
                         "--config", "configs/train_engagement.yaml",
                         "--set", f"storage.root={root}", "--set", "tracking.mode=disabled",
                         "--set", "trainer.num_workers=2", "--set", "trainer.max_failures=1",
                         "--set", "model.epochs=10", "--set", "engagement.max_examples=3000",
                         wait=False)
    assert job.returncode == 0, job.stderr
    deadline = time.monotonic() + 240
    while len(workers := list_actors(address=cluster.dashboard, filters=[
            ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])) < 2:
        assert time.monotonic() < deadline, "the training workers did not start"
        time.sleep(0.5)
    assert len({a.node_id for a in workers}) == 2, workers  # work runs on both nodes
    while len(glob.glob(f"{root}/checkpoints/engagement-*/checkpoint_*")) < 2:
        assert time.monotonic() < deadline, "no checkpoints were written"
        time.sleep(0.2)
    cluster.kill(cluster.nodes[1])  # the second node is lost mid-run
    cluster.wait_for_nodes(1)
    cluster.start_node()  # a replacement joins; the worker group restarts on it
    assert wait_for_job(cluster, "train") == "SUCCEEDED"
    logs = JobSubmissionClient(cluster.dashboard).get_job_logs("train")
    resumed = [line for line in logs.splitlines() if "resuming from the checkpoint" in line]
    assert resumed, "\n".join(line for line in logs.splitlines() if "Controller" in line)[-4000:]
    assert "engagement v1 (challenger)" in logs

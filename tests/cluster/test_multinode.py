"""A two-node Ray cluster on this machine (`ray start --head` and a second `ray start` joining it,
on 127.0.0.1, one CPU each), used as a laptop uses a cluster: jobs go in with `ray job submit
--working-dir .`. The Ray Data feature job runs its tasks on both nodes and writes the tables the
platform's one-node run wrote. A training job spans both nodes; the second node is killed
mid-run, a fresh node joins, and the run finishes from its last checkpoint (Ray Train fault
tolerance)."""

from __future__ import annotations

import glob
import shutil
import time
from collections.abc import Iterator

import pandas as pd
import pytest

from tests.ray_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(num_cpus=1, object_store_memory=400_000_000,
                         RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    try:
        local.start_node(head=True)
        local.wait_for_nodes(1)
        local.add_node()
        yield local
    finally:
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
    from ray.util.state import list_actors, list_tasks

    # The platform's curated data and stream features (on this machine's disk, as on a shared
    # filesystem); the jobs write features, checkpoints and the model under a root of its own.
    root = str(tmp_path / "root")
    for folder in ("curated", "features", "feature_repo"):
        shutil.copytree(f"{platform_root}/{folder}", f"{root}/{folder}")
    engagement = ("user_engagement", "article_engagement")
    for name in engagement:
        shutil.rmtree(f"{root}/features/{name}")

    # The Ray Data feature job: its tasks (read, partial sums, keyed shuffle, windows) run on
    # both nodes, and its tables are the ones the platform's one-node run wrote.
    job = cluster.submit("features", "python", "-m", "jobs.features",
                         "--config", "configs/features.yaml", "--set", f"storage.root={root}",
                         "--set", "tracking.mode=disabled", "--set", "materialize=false")
    assert job.returncode == 0, job.stderr
    job_id = JobSubmissionClient(cluster.dashboard).get_job_info("features").job_id
    tasks = list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job_id)],
                       limit=10_000, raise_on_missing_output=False)
    assert len({t.node_id for t in tasks if t.node_id}) == 2, [t.name for t in tasks]
    for name in engagement:
        key = ["user_id" if name.startswith("user") else "article_id", "event_timestamp"]
        ran, platform = (pd.read_parquet(f"{folder}/features/{name}").sort_values(key)
                         .reset_index(drop=True) for folder in (root, platform_root))
        pd.testing.assert_frame_equal(ran, platform)

    # Training on two workers, one CPU each: one worker per node. Checkpoints every epoch.
    job = cluster.submit("train", "python", "-m", "jobs.train",
                         "--config", "configs/train_engagement.yaml",
                         "--set", f"storage.root={root}", "--set", "tracking.mode=disabled",
                         "--set", "trainer.num_workers=2", "--set", "trainer.max_failures=1",
                         "--set", "model.epochs=5", "--set", "engagement.max_examples=3000",
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
    cluster.add_node()  # a replacement joins; the worker group restarts on it
    assert wait_for_job(cluster, "train") == "SUCCEEDED"
    logs = JobSubmissionClient(cluster.dashboard).get_job_logs("train")
    resumed = [line for line in logs.splitlines() if "resuming from the checkpoint" in line]
    assert resumed, "\n".join(line for line in logs.splitlines() if "Controller" in line)[-4000:]
    assert "engagement v1 (challenger)" in logs

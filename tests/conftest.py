"""Shared fixtures: one local Ray per test session, a Redis server, the platform root that the
notebooks and the Serve app share, and a scratch storage root."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slipway.local import start_redis

# What the Makefile exports, so that plain `pytest` runs as `make test` does: no Ray token auth,
# usage telemetry or Train preemption watcher on the local Ray, models from local paths only,
# DeepSpeed's C++ ops compiled once beside the venv.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch-extensions"))
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SLIPWAY_PROGRESS", "0")
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LABEL_STUDIO_PYTHON", str(ROOT / ".label-studio/bin/python"))
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest-xdist


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder every process of the run shares: the session's own, or under
    pytest-xdist the folder above the workers' own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST_WORKER is not None else base


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory) -> Iterator[object]:
    """One local four-CPU Ray for the whole run, shared by `make test`'s two workers (this
    process's RayContext): a head node started as `ray start` with ports and a temp dir of its
    own by the first worker to need it, joined by the other, stopped when the run ends
    (`pytest_unconfigure`)."""
    import ray
    from filelock import FileLock

    from tests.ray_cluster import LocalCluster

    record = shared_folder(tmp_path_factory) / "ray.json"
    with FileLock(f"{record}.lock"):
        if not record.exists():
            cluster = LocalCluster(num_cpus=4, log_monitor=False)  # log_to_driver=False below
            head = cluster.start_node(head=True)
            record.write_text(json.dumps({"address": cluster.address, "pid": head.pid}))
            cluster.wait_for_nodes(1)
    started = json.loads(record.read_text())
    context = ray.init(address=started["address"], logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context
    ray.shutdown()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the run's Ray, if one started, once every test is done: in the xdist controller
    (after both workers) or in a run without xdist; not in a worker."""
    if hasattr(config, "workerinput"):
        return
    from tests.ray_cluster import stop_node

    record = config._tmp_path_factory.getbasetemp() / "ray.json"
    if record.exists():
        stop_node(json.loads(record.read_text())["pid"])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on 127.0.0.1 and a free port, for the test session."""
    try:
        proc, url = start_redis()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


# moto's S3 server handling one request at a time, so that each conditional write is atomic as
# S3 makes it; prints its port.
S3_SERVER = """
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app),
                     threaded=False)
print(server.port, flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 API on 127.0.0.1 (moto's server) for the test session, with a bucket
    `slipway-test`: its endpoint URL."""
    import boto3

    proc = subprocess.Popen([sys.executable, "-c", S3_SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    endpoint = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1"
                 ).create_bucket(Bucket="slipway-test")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_root(s3_endpoint, monkeypatch) -> str:
    """A fresh `s3://` storage root on the test S3 server; boto3 and pyarrow find the server
    and credentials through the environment, as they would in production."""
    import uuid

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"
                        }.items():
        monkeypatch.setenv(name, value)
    return f"s3://slipway-test/{uuid.uuid4().hex[:8]}"


# `make test` runs two pytest-xdist workers (`-n 2`) on one local Ray. Tests that
# deploy the Serve app, change what it serves or read what a Serve test rewrites (the platform's
# index) run on one worker, in file order, from the first minute (they build the platform root
# first); every other module, and each UNSERVED test of a served module, is a group that either
# worker takes, the platform's readers last, so that the root is built when they need it.
SERVED = ("tests/cluster/test_pipeline.py", "tests/serve/", "tests/notebooks/",
          "tests/model/test_llm.py", "tests/model/test_index.py::test_index_is_built")
UNSERVED = ("tests/model/test_llm.py::test_zero3_with_cpu_offload",)
PLATFORM_FIXTURES = {"platform_root", "platform_build"}
# The platform's readers that take longest start first, so that no worker is left alone at the end.
LONGEST = ("tests/cluster/test_multinode.py", *UNSERVED, "tests/model/test_train.py")


def group(nodeid: str) -> str:
    """The xdist group of a test: `served`, itself (UNSERVED) or its module."""
    if nodeid.startswith(UNSERVED):
        return nodeid
    return "served" if nodeid.startswith(SERVED) else nodeid.split("::")[0]


SERVE_APP = {"running": False}  # set by tests/serve/conftest.py's `startup`


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Once this worker has run its served group, take the Serve app down before the next test:
    its replicas hold CPUs of the run's Ray, which the training runs of later groups need."""
    if SERVE_APP["running"] and group(item.nodeid) != "served":
        from ray import serve

        serve.shutdown()
        SERVE_APP["running"] = False


def pytest_xdist_make_scheduler(config, log):
    """Whole groups to a worker, in collection order (xdist's loadscope with the groups above)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

    config.option.loadscopereorder = False  # keep the lanes' order
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(session, config, items) -> None:
    """Order the tests: the served group, other modules, then the platform's readers, the
    longest first (file order within each)."""
    def lane(item: pytest.Item) -> int:
        if group(item.nodeid) == "served":
            return 0
        if not PLATFORM_FIXTURES & set(getattr(item, "fixturenames", ())):
            return 1
        return 2 if item.nodeid.startswith(LONGEST) else 3

    items.sort(key=lane)  # stable


@pytest.fixture(scope="session")
def label_studio() -> Iterator[object]:
    """A real Label Studio server (its own venv, SQLite) on 127.0.0.1 for the test session,
    started in a scratch folder from the template `make label-studio` made (its database
    migrated once: about 7 s; slipway.labeling.studio); its settings, with the admin's token in
    LABEL_STUDIO_API_KEY."""
    from slipway.labeling.studio import LocalServer
    from slipway.local import free_port

    with LocalServer(tempfile.mkdtemp(prefix="slipway-label-studio-"), free_port(),
                     template=str(ROOT / ".label-studio/template")) as settings:
        yield settings


@pytest.fixture(scope="session")
def platform_build(tmp_path_factory, ray_session) -> tuple[str, str, dict[str, str]]:
    """A small root with every model trained and promoted by the platform's pipeline
    (benchmarks.platform), built once per test run (xdist workers share it: the first to need it
    builds it while the other waits): the root, the pipeline layer used and the outcomes."""
    from filelock import FileLock

    from benchmarks.platform import build_platform, platform_pipeline

    reuse = os.environ.get("SLIPWAY_TEST_PLATFORM_ROOT")
    if reuse:  # the inner loop: a root an earlier session built (its pipeline records say how)
        records = [json.loads(Path(path).read_text())
                   for path in glob.glob(f"{reuse}/pipeline/*.json")]
        ran = {r["stage"]: r["outcome"] for r in records if "stage" in r}
        stages = yaml.safe_load(Path("configs/pipeline.yaml").read_text())["stages"]
        outcomes = {s["name"]: ran.get(s["name"], "waiting")  # no record: it waited
                    for s in stages if s["name"] != "tune"}
        layer = platform_pipeline(reuse, str(tmp_path_factory.mktemp("platform") / "p.yaml"))
        return reuse, layer, outcomes
    folder = shared_folder(tmp_path_factory) / "platform"
    root, layer, built = str(folder / "root"), str(folder / "pipeline.yaml"), folder / "built.json"
    with FileLock(f"{folder}.lock"):
        if not built.exists():
            folder.mkdir(exist_ok=True)
            built.write_text(json.dumps(build_platform(root, layer)))
    return root, layer, json.loads(built.read_text())


@pytest.fixture(scope="session")
def platform_root(platform_build) -> str:
    """The platform root the notebooks, the Serve app and the pipeline tests share."""
    return platform_build[0]


@pytest.fixture
def root(tmp_path) -> str:
    """A fresh storage root."""
    return str(tmp_path / "root")


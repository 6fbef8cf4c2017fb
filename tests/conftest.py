"""Shared fixtures: one local Ray per test session, a Redis server, the platform root that the
notebooks and the Serve app share, and a scratch storage root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.common import start_redis

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SLIPWAY_PROGRESS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """A local two-CPU Ray shared by every test that needs it (its RayContext)."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=True, logging_level="ERROR",
                       log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context
    ray.shutdown()


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


@pytest.fixture(scope="session")
def platform_root(tmp_path_factory, ray_session) -> str:
    """A small root with every model trained and promoted (benchmarks.platform), built once."""
    from benchmarks.platform import build_platform

    root = str(tmp_path_factory.mktemp("platform") / "root")
    build_platform(root)
    return root


@pytest.fixture
def root(tmp_path) -> str:
    """A fresh storage root."""
    return str(tmp_path / "root")

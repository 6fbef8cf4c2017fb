"""The Serve app on the session's local Ray, deployed from `configs/serve/app.yaml` the way
`serve deploy` does, bound to 127.0.0.1 on a free port, over the session's platform root."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml

from serve_apps.client import wait_ready
from slipway.local import free_port
from tests.conftest import SERVE_APP

KEYS = {"tester": "sk-test-0123456789", "slow": "sk-slow-abcdef"}


@pytest.fixture(scope="session")
def serve_config(platform_root, tmp_path_factory, redis_url) -> dict:
    """The shipped Serve config with test args: the platform root, test keys, small engine,
    events published to a stream on the session's Redis."""
    keys_file = tmp_path_factory.mktemp("secrets") / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [
        {"name": "tester", "key": KEYS["tester"], "rate_per_minute": 100_000},
        {"name": "slow", "key": KEYS["slow"], "rate_per_minute": 6, "burst": 3}]}))
    with open("configs/serve/app.yaml") as f:
        config = yaml.safe_load(f)
    config["http_options"]["port"] = free_port()
    args = config["applications"][0]["args"]
    args.update(storage_root=platform_root, logging={"flush_rows": 1000, "flush_interval_s": 0.5},
                auth={"keys_file": str(keys_file), "keys_env": "SLIPWAY_TEST_NO_KEYS"})
    args["generator"]["engine_kwargs"]["kv_cache_memory_bytes"] = 256 << 20
    args["stream"] = {"url": f"redis://{redis_url}", "name": "serve:events"}
    args["follow_interval_s"] = 1.0  # promotions reach the app within a second or so
    args["index_shards"] = 2  # the platform's index: two shards, two IndexShard deployments
    for deployment in config["applications"][0]["deployments"]:  # one replica each: the
        deployment.pop("autoscaling_config", None)  # tests follow a replica by its id
        deployment["num_replicas"] = 1
    # The classifier autoscales (1-2 replicas) on a short fuse: one replica under the light,
    # sequential traffic of most tests, two under the autoscaling test's load.
    classifier = next(d for d in config["applications"][0]["deployments"]
                      if d["name"] == "Classifier")
    classifier.pop("num_replicas")
    classifier["autoscaling_config"] = {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
        "upscale_delay_s": 2, "downscale_delay_s": 5, "metrics_interval_s": 0.5,
        "look_back_period_s": 2}
    return config


@pytest.fixture(scope="session")
def deploy(ray_session) -> Callable[[dict], None]:
    """Send a Serve config to the session's Ray, as `serve deploy` does."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(f"http://{ray_session.dashboard_url}")
    return lambda config: client.deploy_applications(copy.deepcopy(config))


@pytest.fixture(scope="session")
def startup(serve_config, deploy) -> Iterator[tuple[str, list[httpx.Response]]]:
    """The app deployed once: its URL and every /readyz answer seen while it started."""
    from ray import serve

    deploy(serve_config)
    SERVE_APP["running"] = True
    url = f"http://127.0.0.1:{serve_config['http_options']['port']}"
    answers: list[httpx.Response] = []
    wait_ready(url, timeout_s=600, answers=answers)
    yield url, answers
    serve.shutdown()


@pytest.fixture(scope="session")
def base_url(startup) -> str:
    return startup[0]


@pytest.fixture
def api(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60,
                      headers={"Authorization": f"Bearer {KEYS['tester']}"}) as client:
        yield client

"""Operating the app: a new classifier version loaded in place through user_config, autoscaling
up under load and back down, a replica killed under load and replaced, and the route metrics on
Ray's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import copy
import time

import httpx
import ray
import torch

from slipway.registry import Registry
from slipway.storage import Storage
from tests.metrics import scrape
from tests.serve.conftest import KEYS


def classifier_options(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "Classifier")


def test_new_classifier_version_is_loaded_in_place(api, serve_config, deploy, platform_root):
    registry = Registry(Storage(platform_root))
    model, champion = registry.load("article_topic", "champion")
    labels = champion.metadata["labels"]
    head = model.head[-1]
    with torch.no_grad():  # a version that always says labels[-1]: its answers show it is live
        head.bias[-1] += 100.0
    keep = {k: v for k, v in champion.metadata.items()
            if k not in ("name", "version", "created_at", "architecture", "artifact_uri")}
    new = registry.register("article_topic", model.trained_state(),
                            champion.metadata["architecture"]["name"],
                            champion.metadata["architecture"]["params"], **keep)
    before = api.get("/readyz").json()["classifier"]

    config = copy.deepcopy(serve_config)
    classifier_options(config)["user_config"]["ref"] = new.version
    deploy(config)
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        reply = api.post("/v1/classify", json={"texts": ["markets and stocks"]})
        assert reply.status_code == 200  # no request fails during the switch
        seen.append(reply.json()["version"])
        if seen[-1] == new.version:
            break
        time.sleep(0.2)
    assert seen[-1] == new.version
    assert reply.json()["predictions"][0]["label"] == labels[-1]
    after = api.get("/readyz").json()["classifier"]
    assert after["replica"] == before["replica"]  # reconfigured, not restarted
    deploy(serve_config)  # back to the champion for the other tests
    deadline = time.monotonic() + 180
    while api.post("/v1/classify", json={"texts": ["x"]}).json()["version"] != \
            champion.version and time.monotonic() < deadline:
        time.sleep(0.2)


async def _load(base_url: str, total: int, concurrency: int, stop: asyncio.Event | None = None,
                seen: list | None = None) -> list[httpx.Response | None]:
    """Up to `total` one-text classify requests from `concurrency` clients (until `stop`);
    the replies in order of arrival (None for a connection error), also appended to `seen`."""
    headers = {"Authorization": f"Bearer {KEYS['tester']}"}
    replies: list[httpx.Response | None] = [] if seen is None else seen
    queue = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in queue:
            if stop is not None and stop.is_set():
                return
            try:
                replies.append(await client.post("/v1/classify",
                                                 json={"texts": ["stocks rally"]}))
            except httpx.HTTPError:
                replies.append(None)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return replies


def running_replicas(name: str) -> int:
    from ray import serve

    status = serve.status().applications["slipway"].deployments.get(name)
    return status.replica_states.get("RUNNING", 0) if status else 0


def wait_replicas(name: str, count: int, timeout_s: float = 180) -> int:
    """Poll (a generous bound) until `name` has `count` running replicas; the last count."""
    deadline = time.monotonic() + timeout_s
    while (running := running_replicas(name)) != count and time.monotonic() < deadline:
        time.sleep(1)
    return running


def test_classifier_autoscales_up_under_load_and_back_down(api, base_url):
    # The session's config lets the classifier scale between 1 and 2 replicas (conftest).
    assert wait_replicas("Classifier", 1) == 1
    replicas = []

    async def scenario() -> list:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(base_url, total=5000, concurrency=12, stop=stop))
        deadline = time.monotonic() + 180  # bounded: 5,000 requests or 3 minutes
        while time.monotonic() < deadline and not load.done():
            replicas.append(await asyncio.to_thread(running_replicas, "Classifier"))
            if replicas[-1] == 2:
                break
            await asyncio.sleep(1)
        stop.set()
        return await load

    replies = asyncio.run(scenario())
    assert replicas[0] == 1 and replicas[-1] == 2, replicas  # scaled up under load
    assert all(r is not None and r.status_code == 200 for r in replies)
    assert wait_replicas("Classifier", 1) == 1  # and back down once the load stopped


def test_replica_killed_under_load_is_replaced_and_failures_are_retryable(api, base_url):
    from ray.util.state import list_actors

    deadline = time.monotonic() + 120  # a replica stopped by the scale-down may linger
    while len(replica := [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                          if a.class_name.endswith("Classifier")]) != 1:
        assert time.monotonic() < deadline, replica
        time.sleep(0.5)
    before = api.get("/readyz").json()["classifier"]["replica"]

    async def scenario() -> list:
        replies = []
        load = asyncio.create_task(_load(base_url, total=300, concurrency=8, seen=replies))
        while len(replies) < 20:  # the load is flowing
            await asyncio.sleep(0.1)
        ray.kill(ray.get_actor(replica[0].name, namespace="serve"), no_restart=True)
        return await load

    replies = asyncio.run(scenario())
    failed = [r for r in replies if r is None or r.status_code != 200]
    assert len(replies) == 300
    # Every failure is a 503 that tells the client when to retry, never a 500 or a reset.
    assert all(r is not None and r.status_code == 503 and r.headers["retry-after"] == "1"
               for r in failed), {(r.status_code if r else None) for r in failed}
    assert len(failed) < 150, f"{len(failed)} of 300 failed"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = api.get("/readyz")
        if ready.status_code == 200 and ready.json()["classifier"]["replica"] != before:
            break
        time.sleep(1)
    assert ready.json()["classifier"]["replica"] != before  # a new replica took over
    assert api.post("/v1/classify", json={"texts": ["stocks"]}).status_code == 200
    print(f"replica killed under load: {len(failed)} of 300 requests failed (503)")


def test_route_metrics_reach_rays_prometheus_endpoint(api):
    for _ in range(3):
        api.post("/v1/retrieve", json={"query": "markets", "k": 2})
    api.post("/v1/retrieve", json={"query": "markets", "k": 0})
    text = scrape(lambda t: 'route="/v1/retrieve"' in t and "slipway_errors_total" in t)
    lines = [line for line in text.splitlines() if 'route="/v1/retrieve"' in line]
    assert any(line.startswith("ray_slipway_requests_total") and 'status="200"' in line
               for line in lines), lines[:5]
    assert any(line.startswith("ray_slipway_errors_total") and 'status="422"' in line
               for line in lines)
    assert any(line.startswith("ray_slipway_request_latency_ms_bucket") for line in lines)

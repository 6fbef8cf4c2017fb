"""Operating the app: a new classifier version loaded in place through user_config, a replica
killed under load and replaced, and the route metrics on Ray's Prometheus endpoint."""

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
    deadline, seen = time.time() + 60, []
    while time.time() < deadline:
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
    deadline = time.time() + 60
    while api.post("/v1/classify", json={"texts": ["x"]}).json()["version"] != \
            champion.version and time.time() < deadline:
        time.sleep(0.2)


async def _load(base_url: str, total: int, concurrency: int) -> list[int]:
    headers = {"Authorization": f"Bearer {KEYS['tester']}"}
    codes: list[int] = []
    queue = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in queue:
            try:
                reply = await client.post("/v1/classify", json={"texts": ["stocks rally"]})
                codes.append(reply.status_code)
            except httpx.HTTPError:
                codes.append(0)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return codes


def test_replica_killed_under_load_is_replaced_and_failures_are_counted(api, base_url):
    from ray.util.state import list_actors

    before = api.get("/readyz").json()["classifier"]["replica"]

    async def scenario() -> list[int]:
        load = asyncio.create_task(_load(base_url, total=300, concurrency=8))
        await asyncio.sleep(1.0)
        replica = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                   if a.class_name.endswith("Classifier")]
        assert len(replica) == 1
        ray.kill(ray.get_actor(replica[0].name, namespace="serve"), no_restart=True)
        return await load

    codes = asyncio.run(scenario())
    failed = [c for c in codes if c != 200]
    assert len(codes) == 300
    assert set(failed) <= {503, 0}, set(failed)  # a retryable 503, never a 500
    assert len(failed) < 150, f"{len(failed)} of 300 failed"
    deadline = time.time() + 120
    while time.time() < deadline:
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

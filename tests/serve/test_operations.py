"""Operating the app: a new classifier version (as its ONNX int8 variant) loaded in place
through user_config (and the classifier's answer cache, which never serves one version's answer
for another), autoscaling up under load and back down, a replica killed under load and
replaced, and the route metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import copy
import time

import httpx
import ray
import torch

from jobs.optimize import OptimizeConfig
from jobs.optimize import main as optimize_job
from llm.index import IndexSettings, VectorIndex, build_shards
from llm.lexical_index import build_bm25
from slipway.config import load_config
from slipway.registry import Registry
from slipway.storage import Storage
from tests.metrics import samples, scrape
from tests.serve.conftest import KEYS


def classifier_options(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "Classifier")


def cache_counts(until) -> tuple[float, float]:
    """The classifier's cache hits and misses on Ray's metrics endpoint (summed over replicas),
    once `until(hits, misses)` holds (or the last values read)."""
    def counts(text: str) -> tuple[float, float]:
        return tuple(sum(v for _, v in samples(text, f"ray_slipway_cache_{kind}_total",
                                               model="article_topic"))
                     for kind in ("hits", "misses"))

    return counts(scrape(lambda text: until(*counts(text))))


def test_a_new_version_served_as_its_onnx_int8_variant_is_loaded_in_place(
        api, serve_config, deploy, platform_root):
    registry = Registry(Storage(platform_root))
    model, champion = registry.load("article_topic", "champion")
    labels = champion.metadata["labels"]
    head = model.head[-1]
    with torch.no_grad():  # a version that always says labels[-1]: its answers show it is live
        head.bias[-1] += 100.0
    biased = registry.register("article_topic", model.trained_state(),
                               champion.metadata["architecture"]["name"],
                               champion.metadata["architecture"]["params"], **champion.recorded)
    # Its ONNX Runtime int8 variant (jobs.optimize), served by number like any version.
    new = optimize_job(load_config(OptimizeConfig, "configs/optimize.yaml", [
        f"storage.root={platform_root}", "tracking.mode=disabled", f"ref={biased.version}",
        "variants=[onnx_int8]", "alias=null", "measure.calls_b1=10", "measure.batches_b32=1"]
    )).versions["onnx_int8"]
    assert new.metadata["runtime"] == "onnxruntime"
    before = api.get("/readyz").json()["classifier"]

    # The answer cache: a text the champion answered is answered again identically from the
    # cache (however it is spaced); `Cache-Control: no-cache` asks the model again.
    text = "Stock markets rallied as bank shares climbed"
    first = api.post("/v1/classify", json={"texts": [text]})
    assert first.headers["X-Cache"] == "miss"
    assert first.json()["predictions"][0]["label"] != labels[-1]  # what the new version says
    again = [api.post("/v1/classify", json={"texts": [f"  {text} ", f"{text} today"]})
             for _ in range(3)]
    assert all(a.json()["predictions"][0] == first.json()["predictions"][0] for a in again)
    # Four requests for the text on at most two replicas (each with its own cache): at least
    # one was answered from a cache.
    found = [{"hit": 2, "partial": 1, "miss": 0}[a.headers["X-Cache"]] for a in again]
    assert sum(found) >= 1, [a.headers["X-Cache"] for a in again]
    fresh = api.post("/v1/classify", json={"texts": [text]}, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "miss"
    assert fresh.json()["predictions"] == first.json()["predictions"]
    misses = 2 + sum(2 - n for n in found)  # first, fresh and the texts not found above
    exported = cache_counts(lambda h, m: h >= sum(found) and m >= misses)
    assert exported[0] >= sum(found) and exported[1] >= misses, exported  # counted on Ray

    config = copy.deepcopy(serve_config)
    classifier_options(config)["user_config"]["ref"] = new.version
    deploy(config)
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        reply = api.post("/v1/classify", json={"texts": ["markets and stocks", text]})
        assert reply.status_code == 200  # no request fails during the switch
        seen.append(reply.json()["version"])
        if seen[-1] == new.version:
            break
        time.sleep(0.2)
    assert seen[-1] == new.version
    # The variant's answers (the registry loaded it with ONNX Runtime): its own, never the
    # champion's cached one for the same text.
    assert [p["label"] for p in reply.json()["predictions"]] == [labels[-1]] * 2
    assert reply.headers["X-Cache"] == "miss"
    after = api.get("/readyz").json()["classifier"]
    assert after["replica"] == before["replica"]  # reconfigured, not restarted
    deploy(serve_config)  # back to the champion for the other tests
    deadline = time.monotonic() + 180
    while api.post("/v1/classify", json={"texts": ["x"]}).json()["version"] != \
            champion.version and time.monotonic() < deadline:
        time.sleep(0.2)


def _copy_champion(registry: Registry, name: str) -> int:
    """Register the champion's weights (or folder) again: a new version that answers alike."""
    mv = registry.get(name, "champion")
    if mv.metadata.get("format") == "folder":
        path, _ = registry.fetch(name, mv.version)
        return registry.register_folder(name, path, mv.metadata["kind"], **mv.recorded).version
    model, _ = registry.load(name, mv.version)
    state = model.trained_state() if hasattr(model, "trained_state") else model.state_dict()
    arch = mv.metadata["architecture"]
    return registry.register(name, state, arch["name"], arch["params"], **mv.recorded).version


def test_promotions_and_rollbacks_reach_the_running_app_without_a_failed_request(
        api, platform_root):
    """Aliases moved in the registry (as jobs.promote and a rollback move them) are served by
    the running classifier, ranker and adapter within the session's follow interval (1 s);
    every request meanwhile succeeds, and answers and /readyz name the version."""
    registry = Registry(Storage(platform_root))
    names = ("article_topic", "engagement", "articles_lora")
    before = {name: registry.get(name, "champion").version for name in names}

    def served() -> dict[str, int]:
        replies = {
            "article_topic": api.post("/v1/classify", json={"texts": ["markets rally"]}),
            "engagement": api.post("/v1/rank", json={"user_id": 1, "article_ids": [1, 2]}),
            "articles_lora": api.post("/v1/completions", json={
                "model": "articles_lora", "prompt": "Question", "max_tokens": 2}),
        }
        assert {r.status_code for r in replies.values()} == {200}, replies  # none fails
        return {name: reply.json()["version"] for name, reply in replies.items()}

    def wait_for(expected: dict[str, int]) -> None:
        deadline = time.monotonic() + 120
        while (now := served()) != expected:
            assert time.monotonic() < deadline, (now, expected)
            time.sleep(0.2)

    promoted = {}
    for name in names:
        promoted[name] = _copy_champion(registry, name)
        registry.set_alias(name, "champion", promoted[name], "test promotion")
    wait_for(promoted)
    ready = api.get("/readyz").json()
    assert (ready["classifier"]["version"], ready["ranker"]["version"]) == \
        (promoted["article_topic"], promoted["engagement"])
    models = {m["id"]: m["version"] for m in api.get("/v1/models").json()["data"]}
    assert models["articles_lora"] == promoted["articles_lora"]
    for name in names:
        assert registry.rollback(name) == before[name]
    wait_for(before)


def test_a_rebuilt_index_is_served_without_a_failed_request(api, platform_root):
    """An index build replacing the files of both shards (here: the same index less its last
    5 chunks) is served within the follow interval; then the original again."""
    storage = Storage(platform_root)
    original = VectorIndex.load(storage, "articles")
    n = len(original.chunks)
    kept = original.chunks.iloc[:n - 5]
    # Built here, not by Ray Data: the app's replicas hold the session's CPUs.
    shards = build_shards(original.vectors[:n - 5], IndexSettings(shards=2), in_process=True)
    smaller = VectorIndex(shards=shards, chunks=kept, vectors=original.vectors[:n - 5],
                          manifest=dict(original.manifest),
                          lexical=build_bm25(kept["text"].tolist()))
    for index, chunks in ((smaller, n - 5), (original, n)):
        index.save(storage, "articles")
        deadline = time.monotonic() + 120
        while api.get("/readyz").json()["retriever"]["chunks"] != chunks:
            assert time.monotonic() < deadline
            assert api.post("/v1/retrieve", json={"query": "markets", "k": 3}).status_code == 200
            time.sleep(0.2)


async def _load(base_url: str, total: int, concurrency: int, stop: asyncio.Event | None = None,
                seen: list | None = None) -> list[httpx.Response | None]:
    """Up to `total` one-text classify requests from `concurrency` clients (until `stop`),
    past the answer cache;
    the replies in order of arrival (None for a connection error), also appended to `seen`."""
    headers = {"Authorization": f"Bearer {KEYS['tester']}",
               "Cache-Control": "no-cache"}  # load on the model, not on the answer cache
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


def alive_classifiers() -> dict[str, str]:
    """{actor id: actor name} of the Classifier replicas alive now."""
    from ray.util.state import list_actors

    return {a.actor_id: a.name for a in list_actors(
        address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
            if a.class_name.endswith("Classifier")}


def test_classifier_scales_up_under_load_loses_a_replica_without_a_failed_request_and_back(
        api, base_url):
    """The session's classifier scales between 1 and 2 replicas (conftest). Under load it
    scales to 2; one of them is killed while the load goes on: the ingress retries the lost
    calls on the other, so no request fails, and Serve brings the deployment back to 2 replicas
    without the killed one (a replacement; or, when the autoscaler's short fuse took the dip in
    load for a drop and scaled down first, two new ones); once the load stops it scales back to
    1."""
    assert wait_replicas("Classifier", 1) == 1
    replicas, events = [], []

    async def scenario() -> list:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(base_url, total=20_000, concurrency=12, stop=stop))
        deadline = time.monotonic() + 300  # bounded: 20,000 requests or 5 minutes
        while time.monotonic() < deadline and not load.done():
            replicas.append(await asyncio.to_thread(running_replicas, "Classifier"))
            if replicas[-1] == 2:
                break
            await asyncio.sleep(1)
        two = await asyncio.to_thread(alive_classifiers)
        killed = sorted(two)[0]
        ray.kill(ray.get_actor(two[killed], namespace="serve"), no_restart=True)
        events.append("killed")
        while time.monotonic() < deadline and not load.done():
            alive = await asyncio.to_thread(alive_classifiers)
            if killed not in alive and len(alive) == 2 and \
                    await asyncio.to_thread(running_replicas, "Classifier") == 2:
                events.append("replaced")
                break
            await asyncio.sleep(1)
        stop.set()
        return await load

    replies = asyncio.run(scenario())
    assert replicas[0] == 1 and replicas[-1] == 2, replicas  # scaled up under load
    assert events == ["killed", "replaced"], events  # back to 2, the killed one not among them
    failed = [r for r in replies if r is None or r.status_code != 200]
    assert not failed, (len(failed), {(r.status_code if r else None) for r in failed})
    print(f"{len(replies)} requests under load, one replica killed: none failed")
    assert wait_replicas("Classifier", 1) == 1  # and back down once the load stopped


def test_route_metrics_reach_rays_prometheus_endpoint(api):
    for _ in range(3):
        api.post("/v1/retrieve", json={"query": "markets", "k": 2})
    api.post("/v1/retrieve", json={"query": "markets", "k": 0})
    text = scrape(lambda t: any(line.startswith("ray_slipway_errors_total")
                                and 'route="/v1/retrieve"' in line and 'status="422"' in line
                                for line in t.splitlines()))
    lines = [line for line in text.splitlines() if 'route="/v1/retrieve"' in line]
    assert any(line.startswith("ray_slipway_requests_total") and 'status="200"' in line
               for line in lines), lines[:5]
    assert any(line.startswith("ray_slipway_errors_total") and 'status="422"' in line
               for line in lines)
    assert any(line.startswith("ray_slipway_request_latency_ms_bucket") for line in lines)
    # Under the concurrent loads before this test, @serve.batch merged requests: some model calls
    # answered more than one request (the histogram's buckets; its _sum is not reliable across
    # replicas that were killed, so the count of calls is set against the calls of one request).
    calls = sum(v for _, v in samples(text, "ray_slipway_classifier_batch_requests_count",
                                      model="article_topic"))
    single = sum(v for labels, v in samples(text, "ray_slipway_classifier_batch_requests_bucket",
                                            model="article_topic")
                 if float(labels["le"]) == 1)
    assert 0 < single < calls, (single, calls)

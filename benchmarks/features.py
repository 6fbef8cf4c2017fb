"""Feature job throughput (Ray Data vs one pandas process), online lookup latency from client
processes, and stream feature freshness.

    python -m benchmarks.features [--sizes 1000000 10000000] [--repeats 3] [--only PART]

Throughput: the engagement features (both entity kinds, written as Parquet) from events on disk,
timed from reading to written output, median of `--repeats` runs of each side in one Ray session
(the first Ray run, which also starts worker processes, is reported apart as `ray_first_run_s`).
Latency: one (user, article) row of the engagement feature service per lookup, from SQLite and
Redis through Feast's SDK and from Redis through the thin reader (`redis_thin`,
slipway/features/online.py), at 1, 8 and 32 concurrent client processes (spawned, each warmed up,
then started together at a barrier), a fixed number of lookups each.
Stream (`--only stream`): a producer process publishes generated events at `--rate` per second
onto a Redis stream that one consumer actor (slipway/streaming) turns into features; meanwhile
probe clicks of fresh users are published and their features polled online (the Ranker's read):
the freshness is the time from publishing a probe to its click being readable. Then a burst is
drained to measure what one consumer sustains. For the SQLite and the Redis online store.
Rank (`--only rank [--root ROOT]`, not part of the default run): `/v1/rank` with 20 candidates
through the Serve app at 1, 8 and 32 concurrent clients, with the online store on SQLite and on
Redis. `--only` runs one part and updates results/features.json in place.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from benchmarks.common import (
    env_info,
    median_seconds,
    percentile,
    start_ray,
    update_results,
    write_results,
)
from slipway.data.generate import GeneratorConfig, generate, public
from slipway.features.compute import DAY_US, EVENT_COLUMNS, KIND_CODES, KINDS, windowed_features
from slipway.local import start_redis


def pandas_features(events_dir: str, out_dir: str) -> dict[str, int]:
    """The same engagement features in a single pandas process; returns rows per kind."""
    df = pd.read_parquet(events_dir, columns=EVENT_COLUMNS)
    ts = df["event_timestamp"].astype("datetime64[us, UTC]").astype("int64")
    df = df.assign(day=ts // DAY_US, ts=ts, clicked=df["clicked"].astype("int64"))
    last_day = int(df["day"].max())
    rows = {}
    for kind, key in KINDS.items():
        g = (df.groupby([key, "day"], sort=False)
             .agg(impressions=("clicked", "size"), clicks=("clicked", "sum"),
                  dwell=("dwell_seconds", "sum"), last_us=("ts", "max"))
             .reset_index().rename(columns={key: "entity_id"}))
        g.insert(0, "kind", np.int8(KIND_CODES[kind]))
        out = windowed_features(pa.Table.from_pandas(g, preserve_index=False), kind, last_day)
        os.makedirs(f"{out_dir}/features", exist_ok=True)
        pq.write_table(out, f"{out_dir}/features/{kind}.parquet")
        rows[kind] = out.num_rows
    return rows


def ray_features(events_dir: str, out_dir: str) -> dict[str, int]:
    """The Ray Data pipeline and writer of `jobs.features` for the engagement views."""
    from jobs.features import write_views
    from slipway.features.compute import default_partitions, engagement_features, read_events
    from slipway.storage import Storage

    views = engagement_features(read_events(events_dir), default_partitions())
    return write_views(views, Storage(out_dir))


def make_events(n: int, where: Path) -> str:
    """Write `n` generated events as 8 Parquet files; returns the folder."""
    folder = where / f"events_{n}"
    world = generate(GeneratorConfig(num_events=n, num_users=max(500, n // 100),
                                     num_articles=max(300, n // 1000), days=60, seed=1))
    table = pa.Table.from_pandas(public(world.events), preserve_index=False)
    folder.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), 8)):
        pq.write_table(table.take(idx), folder / f"part-{i}.parquet")
    return str(folder)


def throughput(sizes: list[int], repeats: int, work: Path) -> dict:
    """rows/s of both implementations at each size, medians of `repeats` runs."""
    out: dict = {}
    for n in sizes:
        events = make_events(n, work)
        outputs = work / "out"

        def run(fn, events=events, outputs=outputs):
            shutil.rmtree(outputs, ignore_errors=True)
            return fn(events, str(outputs))

        first_start = time.perf_counter()
        ray_rows = run(ray_features)
        first = time.perf_counter() - first_start
        pandas_rows = run(pandas_features)
        assert ray_rows == pandas_rows, (ray_rows, pandas_rows)
        ray_s = median_seconds(lambda: run(ray_features), repeats)
        pandas_s = median_seconds(lambda: run(pandas_features), repeats)
        tag = f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"
        out[tag] = {"ray_rows_per_s": n / ray_s, "pandas_rows_per_s": n / pandas_s,
                    "ray_vs_pandas": pandas_s / ray_s, "ray_first_run_s": first,
                    "ray_s": ray_s, "pandas_s": pandas_s, "feature_rows": sum(ray_rows.values())}
        shutil.rmtree(events)
    return out


_barrier = None


def _init_client(barrier) -> None:
    global _barrier
    _barrier = barrier


def _lookups(root: str, feature_store: dict, thin: bool, lookups: int, seed: int) -> list[float]:
    """One client process: open the store, warm up, wait for the others, then time `lookups`
    single-row reads (ms)."""
    from slipway.features.online import RedisOnlineReader
    from slipway.features.settings import FeatureStoreSettings
    from slipway.features.store import online_features, open_store
    from slipway.storage import Storage

    store = open_store(FeatureStoreSettings(**feature_store), Storage(root))
    read = (RedisOnlineReader(store, "engagement").read if thin
            else lambda rows: online_features(store, rows))
    rng = np.random.default_rng(seed)
    rows = [{"user_id": int(rng.integers(1, 2000)), "article_id": int(rng.integers(1, 600))}
            for _ in range(lookups + 1)]
    read(rows[:1])
    _barrier.wait()
    times = []
    for row in rows[1:]:
        start = time.perf_counter()
        read([row])
        times.append((time.perf_counter() - start) * 1000)
    return times


def online_latency(work: Path, lookups_per_client: int = 40) -> dict:
    """p50/p99 ms of online lookups from SQLite and Redis (SDK and thin reader) at 1, 8 and 32
    client processes."""
    from jobs.features import FeaturesConfig
    from jobs.features import main as features_job
    from jobs.generate import GenerateConfig
    from jobs.generate import main as generate_job
    from jobs.ingest import IngestConfig
    from jobs.ingest import main as ingest_job
    from slipway.config import load_config

    root = str(work / "online")
    common = [f"storage.root={root}", "tracking.mode=disabled"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml",
                             [*common, "generator.num_events=50000"]))
    ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    redis, redis_url = start_redis()
    p50: dict = {}
    p99: dict = {}
    spawn = mp.get_context("spawn")
    try:
        stores = {"sqlite": ([], False),
                  "redis": (["feature_store.online_store.type=redis",
                             f"feature_store.online_store.connection_string={redis_url}"], False)}
        stores["redis_thin"] = (stores["redis"][0], True)
        rng = np.random.default_rng(0)
        for name, (extra, thin) in stores.items():
            cfg = load_config(FeaturesConfig, "configs/features.yaml", [*common, *extra])
            if not thin:
                features_job(cfg)
            p50[name], p99[name] = {}, {}
            for clients in (1, 8, 32):
                barrier = spawn.Barrier(clients)
                with spawn.Pool(clients, initializer=_init_client, initargs=(barrier,)) as pool:
                    args = [(root, cfg.feature_store.model_dump(), thin, lookups_per_client,
                             int(seed)) for seed in rng.integers(0, 1 << 30, clients)]
                    latencies = [t for ts in pool.starmap(_lookups, args, chunksize=1)
                                 for t in ts]
                p50[name][f"c{clients}"] = percentile(latencies, 50)
                p99[name][f"c{clients}"] = percentile(latencies, 99)
    finally:
        redis.terminate()
    return {"online_p50_ms": p50, "online_p99_ms": p99}


def _produce(url: str, name: str, rate: int, seconds: float, out) -> None:
    """Publish generated events at `rate` per second for `seconds` (20 batches a second);
    put (events published, seconds taken) on `out`."""
    from slipway.streaming.events import StreamEvent
    from slipway.streaming.stream import RedisStream, StreamSettings

    stream = RedisStream(StreamSettings(url=url, name=name))
    rng = np.random.default_rng(1)
    per_batch = max(1, rate // 20)
    start = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        now_ms = int(time.time() * 1000)
        types = rng.choice(["impression", "click", "dwell"], per_batch, p=[0.7, 0.2, 0.1])
        stream.publish([StreamEvent(event_id=f"{name}-{sent + i}", type=t,
                                    user_id=int(rng.integers(1, 5000)),
                                    article_id=int(rng.integers(1, 1000)), ts_ms=now_ms,
                                    value=30.0 if t == "dwell" else 1.0)
                        for i, t in enumerate(types)])
        sent += per_batch
        time.sleep(max(0.0, sent / rate - (time.perf_counter() - start)))
    out.put((sent, elapsed))


def stream_freshness(work: Path, rate: int, seconds: float, probes: int,
                     burst: int = 20_000) -> dict:
    """Freshness under a sustained event rate, and one consumer's drain rate, per online
    store."""
    from slipway.features.online import RedisOnlineReader
    from slipway.features.store import (
        FeatureStoreSettings,
        apply_definitions,
        online_features,
        open_store,
    )
    from slipway.storage import Storage
    from slipway.streaming.consumer import ConsumerSettings, start_consumers, stop_consumers
    from slipway.streaming.events import StreamEvent
    from slipway.streaming.stream import StreamSettings, open_stream

    redis, redis_url = start_redis()
    spawn = mp.get_context("spawn")
    out: dict = {}
    try:
        for name, online in (("sqlite", {}), ("redis", {"online_store": {
                "type": "redis", "connection_string": redis_url}})):
            root = str(work / f"stream_{name}")
            settings = FeatureStoreSettings(**online)
            store = open_store(settings, Storage(root))
            apply_definitions(store, Storage(root))
            consumer = ConsumerSettings(stream=StreamSettings(url=f"redis://{redis_url}",
                                                              name=f"bench:{name}"))
            actors = start_consumers(consumer, root, settings.model_dump(), prefix=name)
            ray.get([a.stats.remote() for a in actors])  # constructed: the loop is running
            read = (RedisOnlineReader(store, "ranking").read if name == "redis" else
                    lambda rows, store=store: online_features(store, rows, service="ranking"))
            stream = open_stream(consumer.stream)
            done = spawn.Queue()
            producer = spawn.Process(target=_produce, args=(
                f"redis://{redis_url}", consumer.stream.name, rate, seconds, done))
            producer.start()
            loaded_until = time.monotonic() + seconds
            time.sleep(min(5.0, seconds / 4))  # the producer up to speed
            fresh = []
            for i in range(probes):
                if time.monotonic() > loaded_until - 1:
                    break  # probes only while the load runs
                user, sent = 10**8 + i, time.time()
                stream.publish([StreamEvent(event_id=f"probe-{name}-{i}", type="click",
                                            user_id=user, ts_ms=int(sent * 1000))])
                while read([{"user_id": user, "article_id": 1}])["user_clicks_1h"][0] != 1:
                    if time.time() - sent > 120:
                        raise RuntimeError(f"probe {i} not readable after 120 s")
                    time.sleep(0.02)
                fresh.append(time.time() - sent)
                time.sleep(max(0.0, 0.5 - fresh[-1]))
            published, elapsed = done.get()
            producer.join()
            lag_after = stream.lag()
            # Drain: a burst published at once, timed until the group has acknowledged it.
            start = time.perf_counter()
            for first in range(0, burst, 1000):
                stream.publish([StreamEvent(event_id=f"burst-{name}-{k}", type="impression",
                                            user_id=k % 5000, article_id=k % 1000,
                                            ts_ms=int(time.time() * 1000))
                                for k in range(first, first + 1000)])
            while stream.lag() != {"lag": 0, "pending": 0}:
                time.sleep(0.05)
            drain_s = time.perf_counter() - start
            stop_consumers(actors)
            out[name] = {"freshness_p50_s": percentile(fresh, 50),
                         "freshness_p99_s": percentile(fresh, 99), "probes": len(fresh),
                         "events_per_s": published / elapsed, "lag_after": lag_after,
                         "drain_events_per_s": burst / drain_s}
    finally:
        redis.terminate()
    return out


def rank_latency(root: str, requests: int) -> dict:
    """`/v1/rank` end to end through the app (20 candidates a request, the benchmark's users)
    at 1, 8 and 32 concurrent clients, with the online store on SQLite (Feast's SDK) and on
    Redis (the thin reader), over a platform root."""
    import asyncio
    from datetime import datetime, timezone

    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from benchmarks.serve import LEVELS, app_environment, load, serve_config
    from serve_apps.client import wait_ready
    from slipway.features.settings import FeatureStoreSettings
    from slipway.features.store import apply_definitions, open_store
    from slipway.local import free_port
    from slipway.storage import Storage

    app_environment()
    storage = Storage(root)
    apply_definitions(open_store(FeatureStoreSettings(), storage), storage)
    redis, address = start_redis()
    stores = {"sqlite": {}, "redis": {"online_store": {"type": "redis",
                                                       "connection_string": address}}}
    open_store(FeatureStoreSettings(**stores["redis"]), storage).materialize(
        start_date=datetime(2000, 1, 1, tzinfo=timezone.utc), end_date=datetime.now(timezone.utc))
    users = pd.read_parquet(f"{root}/curated/users")["user_id"].to_numpy()
    articles = pd.read_parquet(f"{root}/curated/articles")["article_id"].to_numpy()
    rng = np.random.default_rng(0)
    bodies = [{"user_id": int(rng.choice(users)),
               "article_ids": rng.choice(articles, 20, replace=False).tolist()}
              for _ in range(requests)]
    context = ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    client = ServeSubmissionClient(f"http://{context.dashboard_url}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    try:
        for name, store in stores.items():
            config = serve_config(root, port)
            config["applications"][0]["args"]["feature_store"] = {"project": "slipway", **store}
            client.deploy_applications(config)
            wait_ready(url, 420)
            time.sleep(3)
            asyncio.run(load(url, "/v1/rank", bodies[:32], 8))  # warm up
            out[name] = {f"c{c}": asyncio.run(load(url, "/v1/rank", bodies, c)) for c in LEVELS}
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.terminate()
    return out


def main() -> None:
    """Run the parts and write results/features.json (`--only`: update one part in it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="stream events per second")
    parser.add_argument("--seconds", type=float, default=60, help="of sustained stream load")
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--only", choices=["throughput", "online", "stream", "rank"],
                        default=None)
    parser.add_argument("--root", default=None, help="platform root for the rank part "
                        "(default: build one, as benchmarks/serve.py does)")
    parser.add_argument("--rank-requests", type=int, default=400, help="per level and store")
    args = parser.parse_args()
    if args.only == "rank":  # the app on its own Ray
        from benchmarks.platform import ensure_platform

        rank = rank_latency(ensure_platform(args.root), args.rank_requests)
        update_results("features", {"rank": rank, "rank_p99_ms": {
            c: rank["redis"][c]["p99_ms"] for c in rank["redis"]}}, [
            (f"/v1/rank on {store} p50 / p99 ms (c1, c8, c32)", ", ".join(
                f"{f[c]['p50_ms']:.0f}/{f[c]['p99_ms']:.0f}" for c in ("c1", "c8", "c32")))
            for store, f in rank.items()])
        return
    start_ray()
    results: dict = {"env": env_info(("ray", "feast", "pandas", "pyarrow", "redis"))}
    table: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "throughput"):
            sizes = throughput(args.sizes, args.repeats, work)
            results["sizes"] = sizes
            for tag, figures in sizes.items():
                results[f"ray_rows_per_s_{tag}"] = figures["ray_rows_per_s"]
                results[f"pandas_rows_per_s_{tag}"] = figures["pandas_rows_per_s"]
                results[f"ray_vs_pandas_{tag}"] = figures["ray_vs_pandas"]
            table += [(f"{tag}: ray / pandas rows/s (ratio)",
                       f"{f['ray_rows_per_s']:,.0f} / {f['pandas_rows_per_s']:,.0f} "
                       f"({f['ray_vs_pandas']:.2f}x; first Ray run {f['ray_first_run_s']:.1f}s)")
                      for tag, f in sizes.items()]
        if args.only in (None, "online"):
            latency = online_latency(work)
            results.update(latency)
            table += [(f"online {store} p50 / p99 ms (c1, c8, c32)", ", ".join(
                f"{latency['online_p50_ms'][store][c]:.1f}/"
                f"{latency['online_p99_ms'][store][c]:.1f}" for c in ("c1", "c8", "c32")))
                for store in latency["online_p50_ms"]]
        if args.only in (None, "stream"):
            stream = stream_freshness(work, args.rate, args.seconds, args.probes)
            results.update(stream=stream,
                           stream_freshness_p99_s=stream["redis"]["freshness_p99_s"],
                           stream_events_per_s=stream["redis"]["events_per_s"])
            table += [(f"stream ({store} online) freshness p50 / p99 s at events/s",
                       f"{f['freshness_p50_s']:.2f} / {f['freshness_p99_s']:.2f} at "
                       f"{f['events_per_s']:,.0f}; one consumer drains "
                       f"{f['drain_events_per_s']:,.0f}/s") for store, f in stream.items()]
    ray.shutdown()
    if args.only:
        update_results("features", results, table)
    else:
        write_results("features", results, table)


if __name__ == "__main__":
    main()

"""Feature job throughput (Ray Data vs one pandas process) and online lookup latency.

    python -m benchmarks.features [--sizes 1000000 10000000] [--repeats 3]

Throughput: the engagement features (both entity kinds, written as Parquet) from events on disk,
timed from reading to written output, median of `--repeats` runs of each side in one Ray session
(the first Ray run, which also starts worker processes, is reported apart as `ray_first_run_s`).
Latency: `get_online_features` of the engagement feature service for one (user, article) row,
from SQLite and from Redis, at 1, 8 and 32 concurrent clients, a fixed number of lookups each.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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
    start_redis,
    write_results,
)
from slipway.data.generate import GeneratorConfig, generate, public
from slipway.features.compute import DAY_US, EVENT_COLUMNS, KIND_CODES, KINDS, windowed_features


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
    from slipway.features.compute import default_partitions, engagement_features
    from slipway.storage import Storage

    events = ray.data.read_parquet(events_dir).select_columns(EVENT_COLUMNS)
    views = engagement_features(events, default_partitions())
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


def online_latency(work: Path, lookups_per_client: int = 40) -> dict:
    """p50/p99 ms of online lookups from SQLite and Redis at 1, 8 and 32 clients."""
    from jobs.features import FeaturesConfig
    from jobs.features import main as features_job
    from jobs.generate import GenerateConfig
    from jobs.generate import main as generate_job
    from jobs.ingest import IngestConfig
    from jobs.ingest import main as ingest_job
    from slipway.config import load_config
    from slipway.features.store import online_features, open_store
    from slipway.storage import Storage

    root = str(work / "online")
    common = [f"storage.root={root}", "tracking.mode=disabled"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml",
                             [*common, "generator.num_events=50000"]))
    ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    redis, redis_url = start_redis()
    p50: dict = {}
    p99: dict = {}
    try:
        stores = {"sqlite": [], "redis": ["feature_store.online_store.type=redis",
                                          "feature_store.online_store.connection_string="
                                          + redis_url]}
        rng = np.random.default_rng(0)
        for name, extra in stores.items():
            cfg = load_config(FeaturesConfig, "configs/features.yaml", [*common, *extra])
            features_job(cfg)
            p50[name], p99[name] = {}, {}
            for clients in (1, 8, 32):
                handles = [open_store(cfg.feature_store, Storage(root)) for _ in range(clients)]

                def client(store, seed: int) -> list[float]:
                    local = np.random.default_rng(seed)
                    times = []
                    for _ in range(lookups_per_client):
                        row = {"user_id": int(local.integers(1, 2000)),
                               "article_id": int(local.integers(1, 600))}
                        start = time.perf_counter()
                        online_features(store, [row])
                        times.append((time.perf_counter() - start) * 1000)
                    return times

                with cf.ThreadPoolExecutor(clients) as pool:
                    seeds = rng.integers(0, 1 << 30, clients)
                    latencies = [t for ts in pool.map(client, handles, seeds) for t in ts]
                p50[name][f"c{clients}"] = percentile(latencies, 50)
                p99[name][f"c{clients}"] = percentile(latencies, 99)
    finally:
        redis.terminate()
    return {"online_p50_ms": p50, "online_p99_ms": p99}


def main() -> None:
    """Run both parts and write results/features.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start_ray()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = throughput(args.sizes, args.repeats, work)
        latency = online_latency(work)
    ray.shutdown()
    results: dict = {"env": env_info(("ray", "feast", "pandas", "pyarrow")), "sizes": sizes,
                     **latency}
    for tag, figures in sizes.items():
        results[f"ray_rows_per_s_{tag}"] = figures["ray_rows_per_s"]
        results[f"pandas_rows_per_s_{tag}"] = figures["pandas_rows_per_s"]
        results[f"ray_vs_pandas_{tag}"] = figures["ray_vs_pandas"]
    table = [(f"{tag}: ray / pandas rows/s (ratio)",
              f"{f['ray_rows_per_s']:,.0f} / {f['pandas_rows_per_s']:,.0f} "
              f"({f['ray_vs_pandas']:.2f}x; first Ray run {f['ray_first_run_s']:.1f}s)")
             for tag, f in sizes.items()]
    for store in ("sqlite", "redis"):
        table.append((f"online {store} p50 / p99 ms (c1, c8, c32)", ", ".join(
            f"{latency['online_p50_ms'][store][c]:.1f}/{latency['online_p99_ms'][store][c]:.1f}"
            for c in ("c1", "c8", "c32"))))
    write_results("features", results, table)


if __name__ == "__main__":
    main()

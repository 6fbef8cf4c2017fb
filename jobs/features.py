"""Compute features from curated data with Ray Data and publish them through Feast.

Writes the offline feature tables under `<root>/features/<view>/` (Parquet with event
timestamps), applies the Feast definitions (`slipway.features.definitions`) and materializes
new feature rows into the online store (SQLite by default, Redis in production).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.features.compute import (
    DAY_US,
    article_text_features,
    default_partitions,
    engagement_features,
    read_events,
    user_profile_features,
)
from slipway.features.definitions import PROFILE_TTL
from slipway.features.store import (
    FeatureStoreSettings,
    apply_definitions,
    materialize,
    open_store,
)
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run


class FeaturesConfig(JobConfig):
    """Feature job settings."""

    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    partitions: int | None = Field(
        default=None, ge=1, description="blocks of partials after the shuffle; default 2 x CPUs")
    materialize: bool = True


@dataclass
class FeaturesResult:
    """Rows written per feature view and the time up to which the online store is loaded."""

    rows: dict[str, int]
    online_until: datetime | None


def latest_event_time(uri: str) -> datetime | None:
    """The latest `event_timestamp` in a Parquet dataset (None when it has no rows)."""
    dataset = pads.dataset(uri, format="parquet")
    return pc.max(dataset.to_table(columns=["event_timestamp"])["event_timestamp"]).as_py()


def write_views(tables: dict[str, ray.data.Dataset], storage: Storage) -> dict[str, int]:
    """Write each view's dataset to features/<view>/ (concurrently); return rows per view."""

    def write(name: str) -> int:
        storage.remove("features", name)
        tables[name].write_parquet(storage.uri("features", name), min_rows_per_file=1_000_000)
        return sum(f.count_rows() for f in
                   pads.dataset(storage.uri("features", name)).get_fragments())

    with ThreadPoolExecutor(len(tables)) as pool:
        return dict(zip(tables, pool.map(write, tables), strict=True))


def _curated(storage: Storage, name: str) -> str:
    """The URI of a curated table (JobFailed when ingestion has not written it)."""
    if not storage.list_files("curated", name):
        raise JobFailed(f"no curated {name} under {storage.uri('curated', name)}; "
                        f"run `python -m jobs.ingest` first")
    return storage.uri("curated", name)


def main(cfg: FeaturesConfig) -> FeaturesResult:
    """Compute every feature view, write the offline tables, apply Feast and materialize."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    partitions = cfg.partitions or default_partitions()
    with track_run("features", cfg, storage) as run:
        for name in ("events", "articles", "users"):
            run.add_data_version(f"curated/{name}", storage.version("curated", name))
        events = read_events(_curated(storage, "events"))
        tables = {f"{kind}_engagement": ds
                  for kind, ds in engagement_features(events, partitions).items()}
        tables["article_text"] = ray.data.read_parquet(_curated(storage, "articles")).map_batches(
            article_text_features, batch_format="pyarrow", batch_size=None)
        tables["user_profile"] = ray.data.read_parquet(_curated(storage, "users")).map_batches(
            user_profile_features, batch_format="pyarrow", batch_size=None)
        rows = write_views(tables, storage)
        for name in rows:
            run.add_data_version(f"features/{name}", storage.version("features", name))
        run.log({f"{name}/rows": n for name, n in rows.items()})

        store = open_store(cfg.feature_store, storage)
        apply_definitions(store, storage)
        online_until = None
        if cfg.materialize:
            newest = {name: latest_event_time(storage.uri("features", name)) for name in rows}
            last = latest_event_time(storage.uri("curated", "events"))
            day_end_us = (int(last.timestamp() * 1e6) // DAY_US + 1) * DAY_US
            online_until = datetime.fromtimestamp(day_end_us / 1e6 + 1, tz=timezone.utc)
            loaded = materialize(store, end=online_until,
                                 start=online_until - PROFILE_TTL - timedelta(days=1),
                                 newest=newest)
            run.log({"materialized_views": len(loaded)})
    for name, n in rows.items():
        print(f"{name}: {n:,} feature rows -> {storage.uri('features', name)}")
    store_kind = cfg.feature_store.online_store.type
    print(f"feature store: registry {storage.uri('feature_repo', 'registry.db')}; online store "
          f"{store_kind}" + (f" loaded up to {online_until:%Y-%m-%d %H:%M:%S} UTC"
                              if online_until else " not materialized"))
    return FeaturesResult(rows=rows, online_until=online_until)


if __name__ == "__main__":
    run_job(FeaturesConfig, main, __doc__)
    ray.shutdown()

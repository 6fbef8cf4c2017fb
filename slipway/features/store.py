"""The Feast feature store: configuration, applying definitions, materializing, reading.

Offline store: Feast's file offline store (dask) over the Parquet feature tables by default, or
Feast's Ray offline store. Measured on Feast 0.67: the file store builds 20,000 training rows in
1.5 s, equal to a pandas `merge_asof` reference; the Ray store's `merge_asof` fails ("right keys
must be sorted") and falls back to a per-row join at ~13 ms per row, and it drops label rows that
share an entity and timestamp. Online store: SQLite under the storage root by default, Redis in
production.

Materialization uses Feast's local engine, reading through the Ray offline store: with Feast
0.67's Ray compute engine (`batch_engine: ray.engine`) a materialized view read back as empty
(None) from the online store where the local engine returns its values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import pandas as pd
from feast import FeatureStore, RepoConfig
from pydantic import Field

from slipway.config import StrictModel
from slipway.features.definitions import ARTICLE, USER, engagement_service, feature_views
from slipway.storage import Storage


class OnlineStoreSettings(StrictModel):
    """Where online features live: `sqlite` (under the storage root) or `redis`."""

    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string: str = Field(
        default="127.0.0.1:6379", description="Redis host:port[,password=...] (redis only)")


class FeatureStoreSettings(StrictModel):
    """Feast project, offline engine and online store."""

    project: str = Field(default="slipway", pattern=r"^[A-Za-z0-9_]+$")
    offline_store: Literal["file", "ray"] = "file"
    online_store: OnlineStoreSettings = OnlineStoreSettings()


def repo_config(settings: FeatureStoreSettings, storage: Storage) -> RepoConfig:
    """Feast's RepoConfig for these settings, with the registry under the storage root."""
    storage.makedirs("feature_repo")
    online: dict = {"type": settings.online_store.type}
    if settings.online_store.type == "sqlite":
        if not storage.is_local:
            raise ValueError("online_store.type sqlite needs a local storage.root; "
                             "use online_store.type: redis with a remote root")
        online["path"] = storage.uri("feature_repo", "online_store.db")
    else:
        online["connection_string"] = settings.online_store.connection_string
    offline: dict = {"type": settings.offline_store}
    if settings.offline_store == "ray":
        offline["storage_path"] = storage.uri("feature_repo", "offline_staging")
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry={"registry_type": "file", "path": storage.uri("feature_repo", "registry.db"),
                  "cache_ttl_seconds": 0},
        offline_store=offline,
        online_store=online,
        entity_key_serialization_version=3,
        repo_path=storage.root if storage.is_local else None,
    )


def open_store(settings: FeatureStoreSettings, storage: Storage) -> FeatureStore:
    """A FeatureStore for these settings (definitions must have been applied once)."""
    return FeatureStore(config=repo_config(settings, storage))


def apply_definitions(store: FeatureStore, storage: Storage) -> None:
    """Register entities, feature views and the feature service (idempotent)."""
    views = feature_views(storage)
    store.apply([USER, ARTICLE, *views, engagement_service(views)])


def materialize(store: FeatureStore, end: datetime, start: datetime,
                newest: dict[str, datetime | None]) -> list[str]:
    """Load feature rows up to `end` into the online store, incrementally; return views loaded.

    Views never materialized before start from `start`; afterwards Feast continues each view
    from where its last materialization ended. A view whose `newest` row is not after that point
    has nothing new and is skipped (Feast's Ray offline store also fails on an empty interval).
    """
    fresh, incremental = [], []
    for view in store.list_feature_views():
        latest = newest.get(view.name)
        if latest is None:
            continue
        if not view.materialization_intervals:
            fresh.append(view.name)
        elif latest > max(interval[1] for interval in view.materialization_intervals):
            incremental.append(view.name)
    if fresh:
        store.materialize(start_date=start, end_date=end, feature_views=fresh)
    if incremental:
        store.materialize_incremental(end_date=end, feature_views=incremental)
    return fresh + incremental


def training_set(store: FeatureStore, labels: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time correct features for each (user_id, article_id, event_timestamp) row.

    Each row gets, per view, the latest feature row at or before its own timestamp (within the
    view's TTL); nothing from after the label's time leaks in. Other columns (the label) pass
    through.
    """
    service = store.get_feature_service("engagement")
    return store.get_historical_features(entity_df=labels, features=service).to_df()


def user_features(store: FeatureStore, users: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """`user_engagement` features of each (user_id, event_timestamp) row as of its own time
    (point-in-time correct, as `training_set`)."""
    return store.get_historical_features(
        entity_df=users, features=[f"user_engagement:{name}" for name in names]).to_df()


def online_features(store: FeatureStore, rows: list[dict]) -> pd.DataFrame:
    """Latest features from the online store for rows like `{"user_id": 1, "article_id": 2}`."""
    service = store.get_feature_service("engagement")
    return store.get_online_features(features=service, entity_rows=rows).to_df()

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

import pandas as pd
import pyarrow as pa
from feast import FeatureService, FeatureStore, RepoConfig
from feast.data_source import PushMode

from slipway.features.columns import STREAM_COLUMNS
from slipway.features.definitions import (
    ARTICLE,
    STREAM_ENTITIES,
    USER,
    engagement_service,
    feature_views,
    ranking_service,
    stream_views,
)
from slipway.features.settings import FeatureStoreSettings
from slipway.storage import Storage


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
    """Register entities, feature views and the feature services (idempotent); the stream
    views' offline folders start with an empty table, so training sets can join them before
    anything was streamed."""
    views, streams = feature_views(storage), stream_views(storage)
    for view in STREAM_COLUMNS:
        if not storage.list_files("features", view):
            storage.write_part(stream_schema(view).empty_table(), "empty", "features", view)
    store.apply([USER, ARTICLE, *views, *streams, engagement_service(views),
                 ranking_service(views, streams)])


def stream_schema(view: str) -> pa.Schema:
    """The columns of a stream view's rows: its entity key, the time of its newest event, when
    it was pushed, its features."""
    key = STREAM_ENTITIES[view].join_key
    return pa.schema([pa.field(key, pa.int64()),
                      pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
                      pa.field("created", pa.timestamp("us", tz="UTC")),
                      *STREAM_COLUMNS[view]])


def push_stream(store: FeatureStore, storage: Storage, view: str, rows: pa.Table,
                writer: str) -> None:
    """Write a stream view's newest rows to the online store through its Feast push source,
    and append them to its offline table (a new Parquet file under `features/<view>/`, the
    push source's batch source) for point-in-time training sets.

    Online, a row is stamped with when it was computed (`created`), not with its newest event:
    Feast's Redis online store keeps a stored row unless the new one's time is later, and a late
    event recounted changes an entity's features without changing its newest event. Callers push
    in the order they read the window state. The offline side is not Feast's
    `PushMode.OFFLINE`: Feast 0.67's file offline store serves it by reading the view's whole
    table and writing it back, on every push.
    """
    rows = rows.select(stream_schema(view).names).cast(stream_schema(view))
    online = rows.to_pandas().assign(event_timestamp=lambda df: df["created"])
    store.push(f"{view}_push", online, to=PushMode.ONLINE)
    storage.write_part(rows, writer, "features", view)


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


def as_of(store: FeatureStore, rows: pd.DataFrame, features: FeatureService | list[str]
          ) -> pd.DataFrame:
    """Point-in-time correct features for each row (its entity keys and `event_timestamp`),
    every row kept and in its order: a row with no feature row of a view within the view's TTL
    before its time gets nulls for that view. (Feast's file store drops such a row when its
    entity has feature rows only outside that span: a user streamed yesterday, a label today.)
    """
    keyed = rows.reset_index(drop=True).assign(_row=lambda df: range(len(df)))
    found = store.get_historical_features(entity_df=keyed, features=features).to_df()
    found = found.drop(columns=[c for c in rows.columns if c != "_row"])
    return keyed.merge(found, on="_row", how="left").drop(columns="_row")


def training_set(store: FeatureStore, labels: pd.DataFrame, service: str = "engagement"
                 ) -> pd.DataFrame:
    """Point-in-time correct features of a feature service for each (user_id, article_id,
    event_timestamp) row.

    Each row gets, per view, the latest feature row at or before its own timestamp (within the
    view's TTL); nothing from after the label's time leaks in. Other columns (the label) pass
    through.
    """
    return as_of(store, labels, store.get_feature_service(service))


def user_features(store: FeatureStore, users: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """`user_engagement` features of each (user_id, event_timestamp) row as of its own time
    (point-in-time correct, as `training_set`)."""
    return as_of(store, users, [f"user_engagement:{name}" for name in names])


def online_features(store: FeatureStore, rows: list[dict], service: str = "engagement"
                    ) -> pd.DataFrame:
    """Latest features of a feature service (`engagement`, or `ranking`: with the stream
    views) from the online store for rows like `{"user_id": 1, "article_id": 2}`."""
    return store.get_online_features(features=store.get_feature_service(service),
                                     entity_rows=rows).to_df()

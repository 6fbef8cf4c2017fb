"""The Feast feature definitions: the single source of features for training and serving.

Entities `user` and `article`; feature views over the Parquet tables that `jobs.features` writes
under `<root>/features/<view>/`; and the feature service `engagement`, the set the engagement model
is trained and served with.

The stream views `user_stream` and `article_stream` are fed by Feast push sources
(`<view>_push`): the stream consumer (slipway/streaming) pushes each entity's window counts to the
online store and appends the same rows under `<root>/features/<view>/`, their push source's batch
source, so training sets join them point-in-time like any view. A row's `created` (when it was
pushed) breaks ties between rows of one event time (a late event recounted). Their TTL is their
longest window: a row older than an hour says nothing about the last hour. The feature service
`ranking` is `engagement` plus the stream views: what the Ranker reads, in one online read.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, Int64, String

from slipway.features.columns import STREAM_COLUMNS, STREAM_WINDOWS_S, VIEW_COLUMNS
from slipway.storage import Storage

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A reader of the platform")
ARTICLE = Entity(name="article", join_keys=["article_id"], value_type=ValueType.INT64,
                 description="A published article")

# A profile lives for ever; a daily engagement snapshot is stale once two newer days exist.
PROFILE_TTL = timedelta(days=3650)
SNAPSHOT_TTL = timedelta(days=2)
STREAM_TTL = timedelta(seconds=max(STREAM_WINDOWS_S.values()))


FEAST_TYPES = {pa.int64(): Int64, pa.float64(): Float64, pa.string(): String}
ENTITIES: dict[str, tuple[Entity, timedelta]] = {
    "user_engagement": (USER, SNAPSHOT_TTL), "article_engagement": (ARTICLE, SNAPSHOT_TTL),
    "user_profile": (USER, PROFILE_TTL), "article_text": (ARTICLE, PROFILE_TTL)}
VIEW_FIELDS: dict[str, tuple[Entity, timedelta, list[Field]]] = {
    name: (entity, ttl, [Field(name=f.name, dtype=FEAST_TYPES[f.type])
                         for f in VIEW_COLUMNS[name]])
    for name, (entity, ttl) in ENTITIES.items()}
STREAM_ENTITIES: dict[str, Entity] = {"user_stream": USER, "article_stream": ARTICLE}


def feature_views(storage: Storage) -> list[FeatureView]:
    """Feature views reading the offline tables under `storage`."""
    views = []
    for name, (entity, ttl, fields) in VIEW_FIELDS.items():
        source = FileSource(name=f"{name}_source", path=storage.uri("features", name),
                            timestamp_field="event_timestamp")
        views.append(FeatureView(name=name, entities=[entity], ttl=ttl, schema=fields,
                                 source=source, online=True))
    return views


def stream_views(storage: Storage) -> list[FeatureView]:
    """The near-real-time views, each fed by its push source `<view>_push`."""
    views = []
    for name, entity in STREAM_ENTITIES.items():
        batch = FileSource(name=f"{name}_source", path=storage.uri("features", name),
                           timestamp_field="event_timestamp", created_timestamp_column="created")
        push = PushSource(name=f"{name}_push", batch_source=batch)
        fields = [Field(name=f.name, dtype=FEAST_TYPES[f.type]) for f in STREAM_COLUMNS[name]]
        views.append(FeatureView(name=name, entities=[entity], ttl=STREAM_TTL, schema=fields,
                                 source=push, online=True))
    return views


def ranking_service(views: list[FeatureView], streams: list[FeatureView]) -> FeatureService:
    """What the Ranker reads: the engagement model's features and the stream views."""
    return FeatureService(name="ranking", features=[*views, *streams],
                          description="engagement features and the near-real-time stream views")


def engagement_service(views: list[FeatureView]) -> FeatureService:
    """The features of the engagement (click) model, from every view."""
    return FeatureService(name="engagement", features=views,
                          description="Features of the click model, for training and serving")


def feature_refs() -> list[str]:
    """`view:feature` references of every feature, in a stable order."""
    return [f"{view}:{f.name}" for view, (_, _, fields) in VIEW_FIELDS.items() for f in fields]

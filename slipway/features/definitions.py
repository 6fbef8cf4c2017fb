"""The Feast feature definitions: the single source of features for training and serving.

Entities `user` and `article`; feature views over the Parquet tables that `jobs.features` writes
under `<root>/features/<view>/`; and the feature service `engagement`, the set the engagement model
is trained and served with.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from slipway.features.columns import VIEW_COLUMNS
from slipway.storage import Storage

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A reader of the platform")
ARTICLE = Entity(name="article", join_keys=["article_id"], value_type=ValueType.INT64,
                 description="A published article")

# A profile lives for ever; a daily engagement snapshot is stale once two newer days exist.
PROFILE_TTL = timedelta(days=3650)
SNAPSHOT_TTL = timedelta(days=2)


FEAST_TYPES = {pa.int64(): Int64, pa.float64(): Float64, pa.string(): String}
ENTITIES: dict[str, tuple[Entity, timedelta]] = {
    "user_engagement": (USER, SNAPSHOT_TTL), "article_engagement": (ARTICLE, SNAPSHOT_TTL),
    "user_profile": (USER, PROFILE_TTL), "article_text": (ARTICLE, PROFILE_TTL)}
VIEW_FIELDS: dict[str, tuple[Entity, timedelta, list[Field]]] = {
    name: (entity, ttl, [Field(name=f.name, dtype=FEAST_TYPES[f.type])
                         for f in VIEW_COLUMNS[name]])
    for name, (entity, ttl) in ENTITIES.items()}


def feature_views(storage: Storage) -> list[FeatureView]:
    """Feature views reading the offline tables under `storage`."""
    views = []
    for name, (entity, ttl, fields) in VIEW_FIELDS.items():
        source = FileSource(name=f"{name}_source", path=storage.uri("features", name),
                            timestamp_field="event_timestamp")
        views.append(FeatureView(name=name, entities=[entity], ttl=ttl, schema=fields,
                                 source=source, online=True))
    return views


def engagement_service(views: list[FeatureView]) -> FeatureService:
    """The features of the engagement (click) model, from every view."""
    return FeatureService(name="engagement", features=views,
                          description="Features of the click model, for training and serving")


def feature_refs() -> list[str]:
    """`view:feature` references of every feature, in a stable order."""
    return [f"{view}:{f.name}" for view, (_, _, fields) in VIEW_FIELDS.items() for f in fields]

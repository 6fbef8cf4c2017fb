"""Every feature column's name and type, by feature view, without Feast: model code, the Serve
replicas and Ray workers read these, and `definitions` builds Feast's objects from them
(importing Feast costs a process seconds)."""

from __future__ import annotations

import pyarrow as pa

from slipway.features.compute import KINDS, window_schema


def _window_columns(kind: str) -> list[pa.Field]:
    """The window features `compute.windowed_features` writes for `kind` (user or article)."""
    return [f for f in window_schema(kind) if f.name not in (KINDS[kind], "event_timestamp")]


VIEW_COLUMNS: dict[str, list[pa.Field]] = {
    "user_engagement": _window_columns("user"),
    "article_engagement": _window_columns("article"),
    "user_profile": [pa.field("user_country", pa.string()), pa.field("user_device", pa.string())],
    "article_text": [pa.field("article_topic", pa.string()),
                     pa.field("article_title_words", pa.int64()),
                     pa.field("article_body_words", pa.int64()),
                     pa.field("article_body_chars", pa.int64())],
}

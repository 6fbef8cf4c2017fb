"""Every feature column's name and type, by feature view, without Feast: model code, the Serve
replicas and Ray workers read these, and `definitions` builds Feast's objects from them
(importing Feast costs a process seconds).

`VIEW_COLUMNS` are the daily batch views (the engagement model's inputs); `STREAM_COLUMNS` are the
near-real-time views the stream consumer (slipway/streaming) pushes."""

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

STREAM_WINDOWS_S: dict[str, int] = {"15m": 900, "1h": 3600}
"""The stream features' windows, by the suffix their columns carry."""


def _stream_columns(kind: str) -> list[pa.Field]:
    counts = [pa.field(f"{kind}_{what}_{suffix}", pa.int64())
              for suffix in STREAM_WINDOWS_S for what in ("impressions", "clicks")]
    return [*counts, pa.field(f"{kind}_ctr_1h", pa.float64()),
            pa.field(f"{kind}_dwell_seconds_1h", pa.float64()),
            pa.field(f"{kind}_seconds_since_last_click", pa.float64())]


STREAM_COLUMNS: dict[str, list[pa.Field]] = {
    "user_stream": _stream_columns("user"),
    "article_stream": _stream_columns("article"),
}

"""Features end to end: Ray Data tables, Feast offline (point-in-time) and online stores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.features import FeaturesConfig
from jobs.features import main as features_job
from slipway.config import load_config
from slipway.features.store import online_features, open_store, training_set
from slipway.storage import Storage

pytestmark = pytest.mark.usefixtures("ray_session")


def write_curated(root: str, events: list[tuple]) -> None:
    """Curated tables for one user and one article, with the given (time, clicked) events."""
    base = Path(root, "curated")
    for name in ("events", "users", "articles"):
        (base / name).mkdir(parents=True, exist_ok=True)
    ts = pd.to_datetime([t for t, _ in events], utc=True).astype("datetime64[us, UTC]")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({
        "event_id": range(1, len(events) + 1), "user_id": 1, "article_id": 7,
        "event_timestamp": ts, "clicked": [c for _, c in events],
        "dwell_seconds": [10.0 if c else 0.0 for _, c in events]}), preserve_index=False),
        base / "events" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": [1], "signup_date": pa.array(
        [pd.Timestamp("2025-06-01").date()]), "country": ["DE"], "device": ["mobile"]}),
        base / "users" / "part-0.parquet")
    pq.write_table(pa.table({"article_id": [7], "title": ["A title"], "body": ["Some body."],
                             "topic": ["science"], "published_at": pa.array(
                                 [pd.Timestamp("2025-12-31", tz="UTC")])}),
                   base / "articles" / "part-0.parquet")


def newest_offline(root: str) -> dict:
    """User 1's and article 7's features from the newest row of each offline table: what the
    online store must serve (SQLite and Redis alike)."""
    row = {"user_id": 1, "article_id": 7}
    for view in ("user_engagement", "article_engagement", "user_profile", "article_text"):
        table = pd.read_parquet(f"{root}/features/{view}")
        newest = table.sort_values("event_timestamp").iloc[-1]
        row.update(newest.drop(["event_timestamp", "user_id", "article_id"], errors="ignore"))
    return plain(row)


def plain(row: dict) -> dict:
    """Missing values as None, so that two rows compare equal whatever their NaN types."""
    return {k: (None if pd.isna(v) else v) for k, v in row.items()}


DAY1 = [("2026-01-01 08:00", True), ("2026-01-01 09:00", True)]
DAY3 = [("2026-01-03 01:00", False), ("2026-01-03 02:00", False), ("2026-01-03 03:00", False),
        ("2026-01-03 04:00", False)]
DAY5 = [("2026-01-05 10:00", True)]


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_point_in_time_training_set_and_incremental_online_store(root, online, request):
    extra = []
    if online == "redis":
        extra = ["feature_store.online_store.type=redis",
                 f"feature_store.online_store.connection_string={request.getfixturevalue('redis_url')}"]
    cfg = load_config(FeaturesConfig, None, [f"storage.root={root}", "tracking.mode=disabled",
                                             f"feature_store.project=pit_{online}", *extra])
    write_curated(root, DAY1 + DAY3)
    features_job(cfg)
    store = open_store(cfg.feature_store, Storage(root))

    labels = pd.DataFrame({
        "user_id": 1, "article_id": 7, "label": [1, 0, 1, 0],
        "event_timestamp": pd.to_datetime(["2026-01-01 12:00", "2026-01-02 06:00",
                                           "2026-01-03 12:00", "2026-01-04 00:00"], utc=True)})
    got = training_set(store, labels).sort_values("event_timestamp").reset_index(drop=True)
    assert got["label"].tolist() == [1, 0, 1, 0]
    # Same-day events are not visible until the day's snapshot at midnight: no leakage. The
    # first day's row sees the user's opening snapshot: zero counts, no recency.
    assert got.loc[0, ["user_impressions_7d", "user_clicks_1d"]].tolist() == [0, 0]
    assert pd.isna(got.loc[0, "user_days_since_last_event"])
    assert got.loc[1, ["user_impressions_1d", "user_clicks_1d"]].tolist() == [2, 2]
    # 2026-01-03 12:00 sees the snapshot of 01-03 00:00 (through 01-02), not day 3's events.
    assert got.loc[2, ["user_impressions_1d", "user_impressions_7d"]].tolist() == [0, 2]
    assert got.loc[3, ["user_impressions_1d", "user_impressions_7d", "user_clicks_7d"]
                   ].tolist() == [4, 6, 2]
    assert got.loc[3, "article_impressions_7d"] == 6
    assert got.loc[3, "user_days_since_last_event"] == pytest.approx(20 / 24)
    assert (got["user_country"] == "DE").all() and (got["article_topic"] == "science").all()

    def online_row() -> dict:
        return plain(online_features(store, [{"user_id": 1, "article_id": 7}]).iloc[0].to_dict())

    first = online_row()
    assert first["user_impressions_7d"] == 6 and first["user_device"] == "mobile"
    assert first == newest_offline(root)  # every feature: the newest row of its offline view

    # New events arrive; a second run materializes only what is new.
    write_curated(root, DAY1 + DAY3 + DAY5)
    features_job(cfg)
    second = online_row()
    assert second["user_impressions_7d"] == 7 and second["user_clicks_1d"] == 1
    assert second["article_body_words"] == 2
    assert second == newest_offline(root)
    intervals = {v.name: len(v.materialization_intervals) for v in store.list_feature_views()}
    # Engagement views got a second interval; profiles had nothing new and were skipped; the
    # stream views are pushed to, never materialized.
    assert intervals == {"user_engagement": 2, "article_engagement": 2, "user_profile": 1,
                         "article_text": 1, "user_stream": 0, "article_stream": 0}

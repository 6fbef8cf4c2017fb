"""Feature computation: window features match a direct definition on crafted events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from slipway.features.compute import (
    DAY_US,
    article_text_features,
    daily_partials,
    windowed_features,
)


def events_table(rows) -> pa.Table:
    df = pd.DataFrame(rows, columns=["user_id", "article_id", "event_timestamp", "clicked",
                                     "dwell_seconds"])
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return pa.Table.from_pandas(df, preserve_index=False)


def brute_force(events: pd.DataFrame, user: int, snapshot: pd.Timestamp, window: int):
    lo = snapshot - pd.Timedelta(days=window)
    mine = events[(events.user_id == user) & (events.event_timestamp >= lo)
                  & (events.event_timestamp < snapshot)]
    return len(mine), int(mine.clicked.sum())


def test_windows_match_direct_definition():
    rng = np.random.default_rng(0)
    n = 3000
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        rng.uniform(0, 40 * 86400, n), unit="s")
    events = events_table({"user_id": rng.integers(1, 20, n), "article_id": rng.integers(1, 9, n),
                           "event_timestamp": ts, "clicked": rng.random(n) < 0.3,
                           "dwell_seconds": rng.uniform(0, 60, n)})
    # Two blocks, as Ray Data would hand them over, with entities split across both.
    partials = pa.concat_tables([daily_partials(events.slice(0, 1700)),
                                 daily_partials(events.slice(1700))])
    last_day = int(pc.max(partials["day"]).as_py())
    feats = windowed_features(partials, "user", last_day).to_pandas()
    df = events.to_pandas()
    sample = feats.sample(60, random_state=1)
    for _, row in sample.iterrows():
        for w in (1, 7, 30):
            imp, clk = brute_force(df, row.user_id, row.event_timestamp, w)
            assert row[f"user_impressions_{w}d"] == imp
            assert row[f"user_clicks_{w}d"] == clk
            assert np.isclose(row[f"user_ctr_{w}d"], (clk + 1) / (imp + 5))
        before = df[(df.user_id == row.user_id) & (df.event_timestamp < row.event_timestamp)]
        recency = (row.event_timestamp - before.event_timestamp.max()).total_seconds() / 86400
        assert np.isclose(row.user_days_since_last_event, recency, equal_nan=True)
    # Snapshots are stamped at midnight, from the day of each user's first event (zero counts,
    # no recency) through the day after the last day, one per day.
    assert (feats.event_timestamp == feats.event_timestamp.dt.normalize()).all()
    first_event_day = df.groupby("user_id").event_timestamp.min().dt.normalize()
    per_user = feats.groupby("user_id").event_timestamp.agg(["min", "max", "size"])
    assert (per_user["min"] == first_event_day).all()
    assert (per_user["max"] == pd.Timestamp((last_day + 1) * DAY_US, unit="us", tz="UTC")).all()
    assert ((per_user["max"] - per_user["min"]).dt.days + 1 == per_user["size"]).all()
    opening = feats[feats.event_timestamp.isin(first_event_day.to_numpy())
                    & (feats.event_timestamp == feats.user_id.map(first_event_day))]
    assert len(opening) == len(first_event_day)
    assert (opening.user_impressions_30d == 0).all()
    assert opening.user_days_since_last_event.isna().all()


def test_article_text_statistics():
    table = pa.table({"article_id": [1], "title": ["Big chip news"], "body": ["One two three."],
                      "topic": ["technology"],
                      "published_at": pa.array([pd.Timestamp("2026-01-01", tz="UTC")])})
    out = article_text_features(table).to_pylist()[0]
    assert out["article_title_words"] == 3 and out["article_body_words"] == 3
    assert out["article_body_chars"] == 14 and out["article_topic"] == "technology"

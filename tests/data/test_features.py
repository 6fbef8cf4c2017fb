"""Features end to end: Ray Data tables, Feast offline (point-in-time) and online stores."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.features import pandas_features
from jobs.features import FeaturesConfig
from jobs.features import main as features_job
from jobs.generate import GenerateConfig
from jobs.generate import main as generate_job
from jobs.ingest import IngestConfig
from jobs.ingest import main as ingest_job
from slipway.config import load_config
from slipway.features.store import online_features, open_store, training_set
from slipway.storage import Storage

pytestmark = pytest.mark.usefixtures("ray_session")


def test_generated_data_flows_to_features_and_matches_pandas(root):
    common = [f"storage.root={root}", "tracking.mode=offline"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml", [
        *common, "generator.num_events=6000", "generator.num_users=200",
        "generator.num_articles=120", "generator.days=20"]))
    ingested = ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    assert ingested["events"].quarantined == 30 and ingested["users"].quarantined == 2
    result = features_job(load_config(FeaturesConfig, "configs/features.yaml", common))
    assert result.rows["article_text"] == 120 and result.rows["user_profile"] == 198

    reference = pandas_features(f"{root}/curated/events", f"{root}/reference")
    for kind in ("user", "article"):
        key = f"{kind}_id"
        ray_df = pd.read_parquet(f"{root}/features/{kind}_engagement")
        ray_df = ray_df.sort_values([key, "event_timestamp"]).reset_index(drop=True)
        ref_df = pd.read_parquet(f"{root}/reference/features/{kind}.parquet")
        ref_df = ref_df.sort_values([key, "event_timestamp"]).reset_index(drop=True)
        assert len(ray_df) == reference[kind] == result.rows[f"{kind}_engagement"]
        pd.testing.assert_frame_equal(ray_df, ref_df[ray_df.columns], check_dtype=False)
        check_against_brute_force(ray_df, pd.read_parquet(f"{root}/curated/events"), kind)

    # Every job run is tracked: a manifest with code and data versions, and a W&B run.
    manifests = [json.loads(Path(p).read_text())
                 for p in glob.glob(f"{root}/runs/features/*.json")]
    assert len(manifests) == 1 and manifests[0]["status"] == "succeeded"
    assert {"curated/events", "features/user_engagement"} <= set(manifests[0]["data_versions"])
    assert len(manifests[0]["git_sha"]) == 40
    assert manifests[0]["metrics"]["user_engagement/rows"] == result.rows["user_engagement"]
    run_id = manifests[0]["run_id"]
    assert glob.glob(f"{root}/wandb/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")


def check_against_brute_force(features: pd.DataFrame, events: pd.DataFrame, kind: str) -> None:
    """Recompute 60 sampled snapshot rows straight from the events, one filter per window: the
    events of that entity in the w days before the snapshot's midnight."""
    key = f"{kind}_id"
    day = pd.Timedelta(days=1)
    sample = features.sample(60, random_state=0)
    assert sample[f"{kind}_clicks_30d"].gt(0).sum() > 20  # the sample exercises the means
    for _, row in sample.iterrows():
        mine = events[events[key] == row[key]]
        before = mine[mine["event_timestamp"] < row["event_timestamp"]]
        for w in (1, 7, 30):
            window = before[before["event_timestamp"] >= row["event_timestamp"] - w * day]
            clicks = int(window["clicked"].sum())
            assert row[f"{kind}_impressions_{w}d"] == len(window), (row[key], w)
            assert row[f"{kind}_clicks_{w}d"] == clicks, (row[key], w)
            assert row[f"{kind}_ctr_{w}d"] == pytest.approx((clicks + 1) / (len(window) + 5))
            dwell = window.loc[window["clicked"], "dwell_seconds"].mean() if clicks else 0.0
            assert row[f"{kind}_dwell_mean_{w}d"] == pytest.approx(dwell), (row[key], w)
        since = row[f"{kind}_days_since_last_event"]
        if before.empty:
            assert pd.isna(since)
        else:
            gap = (row["event_timestamp"] - before["event_timestamp"].max()) / day
            assert since == pytest.approx(gap)


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

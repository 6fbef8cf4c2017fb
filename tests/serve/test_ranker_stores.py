"""The Ranker deployment's class on Redis, as production configures it: before materializing,
Redis has nothing for the platform's users; after, the same features and rankings as SQLite, read
by the thin reader that returns exactly what Feast's SDK returns, stream features included."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from serve_apps.ranker import Ranker
from slipway.features.online import RedisOnlineReader
from slipway.features.store import (
    FeatureStoreSettings,
    online_features,
    open_store,
    push_stream,
    stream_schema,
)
from slipway.storage import Storage


def test_the_ranker_reads_redis_and_ranks_as_on_sqlite(platform_root, redis_url, tmp_path):
    root = str(tmp_path / "root")  # a copy: the shared root's registry stays as it was
    for folder in ("models", "feature_repo"):
        shutil.copytree(f"{platform_root}/{folder}", f"{root}/{folder}")
    redis = {"project": "slipway",
             "online_store": {"type": "redis", "connection_string": redis_url}}
    articles = pd.read_parquet(f"{platform_root}/curated/articles")["article_id"].head(12)
    users = pd.read_parquet(f"{platform_root}/curated/users")["user_id"].head(5).tolist()
    on_redis = Ranker.func_or_class(root, "engagement", redis, 0)
    empty = on_redis._rank(users[0], articles.tolist(), "champion")["ranking"]
    assert not any(r["features_found"] for r in empty)  # nothing in Redis yet

    open_store(FeatureStoreSettings(**redis), Storage(root)).materialize(
        start_date=datetime(2000, 1, 1, tzinfo=timezone.utc),
        end_date=datetime.now(timezone.utc))
    sqlite = Ranker.func_or_class(root, "engagement", {"project": "slipway"}, 0)
    for user in users:
        a = sqlite._rank(user, articles.tolist(), "champion")
        b = on_redis._rank(user, articles.tolist(), "champion")
        assert a["ranking"] == b["ranking"] and a["features"] == b["features"]
        assert all(r["features_found"] for r in b["ranking"])

    # The thin reader the Ranker uses on Redis returns what Feast's SDK returns, for known and
    # unknown entities, daily and stream views (pushed for one user and two articles).
    store = open_store(FeatureStoreSettings(**redis), Storage(root))
    now = datetime.now(timezone.utc)
    for view, items in (
            ("user_stream", [{"user_id": users[0], "user_clicks_1h": 2, "user_ctr_1h": 0.5}]),
            ("article_stream", [{"article_id": int(a), "article_impressions_15m": n}
                                for a, n in zip(articles.head(2), [4, 1], strict=True)])):
        push_stream(store, Storage(root), view, pa.Table.from_pylist(
            [{**i, "event_timestamp": now, "created": now} for i in items],
            schema=stream_schema(view)), "test")
    rows = [{"user_id": u, "article_id": int(a)} for u in [*users, 10**9]
            for a in [*articles.tolist(), 10**9]]
    thin = RedisOnlineReader(store, "ranking").read(rows)
    sdk = online_features(store, rows, service="ranking")
    assert sorted(thin.columns) == sorted(sdk.columns)
    pd.testing.assert_frame_equal(thin[sdk.columns], sdk, check_dtype=False)
    assert thin["user_clicks_1h"].iloc[0] == 2 and on_redis.read(rows).equals(thin)

"""The Ranker deployment's class on Redis, as production configures it: before materializing,
Redis has nothing for the platform's users; after, the same features and rankings as SQLite."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pandas as pd

from serve_apps.ranker import Ranker
from slipway.features.store import FeatureStoreSettings, open_store
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

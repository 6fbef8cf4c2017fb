"""Ranker deployment: scores candidate articles for a user with the engagement model.

Features come from the Feast online store (SQLite or Redis, as configured) through the `ranking`
feature service, in one read: the `engagement` features (the same definitions that built the
model's training set, and the same preprocessing stored with the model version) and the stream
views the stream consumer keeps fresh (slipway/streaming), which are logged with each answer.
The champion alias is followed (serve_apps/follow.py): a promotion or rollback is served within
the app's `follow_interval_s`. Experiment variants' versions are held beside it
(serve_apps/versions.py).
"""

from __future__ import annotations

import asyncio

from ray import serve

from serve_apps.follow import follow
from serve_apps.versions import Versions
from slipway.features.online import RedisOnlineReader
from slipway.features.settings import FeatureStoreSettings
from slipway.features.store import online_features, open_store
from slipway.models.engagement import features_found
from slipway.models.scoring import predict_proba
from slipway.predictions import json_records
from slipway.registry import Registry
from slipway.storage import Storage


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.1})
class Ranker:
    """Click probabilities of (user, article) pairs, best first."""

    def __init__(self, storage_root: str, model_name: str, feature_store: dict,
                 follow_interval_s: float) -> None:
        storage = Storage(storage_root)
        # The champion, and the versions experiment variants name (`engagement@7`), side by
        # side in this replica.
        self.versions = Versions(Registry(storage), model_name)
        self.store = open_store(FeatureStoreSettings(**feature_store), storage)
        # On Redis (production), Feast's own layout read directly: the same values, without
        # the SDK's per-call overhead (slipway/features/online.py).
        reader = (RedisOnlineReader(self.store, "ranking").read
                  if self.store.config.online_store.type == "redis" else None)
        self.read = reader or (lambda rows: online_features(self.store, rows, service="ranking"))
        follow(self.versions.refresh, follow_interval_s, f"ranker {model_name}")

    def _rank(self, user_id: int, article_ids: list[int], ref: str | int) -> dict:
        model, version = self.versions.get(ref)  # one version for the whole request
        rows = [{"user_id": user_id, "article_id": a} for a in article_ids]
        features = self.read(rows)
        scores = predict_proba(model, version, features)
        found = features_found(features)
        ranking = sorted(({"article_id": a, "score": float(s), "features_found": bool(f)}
                          for a, s, f in zip(article_ids, scores, found, strict=True)),
                         key=lambda r: -r["score"])
        return {"model": version.name, "version": version.version,
                "user_id": user_id, "ranking": ranking,
                "features": json_records(features)}

    async def rank(self, user_id: int, article_ids: list[int],
                   ref: str | int = "champion") -> dict:
        """The candidates ordered by the click probability of the version `ref` names (an
        alias or a number), with the features the model saw."""
        return await asyncio.to_thread(self._rank, user_id, article_ids, ref)

    def ready(self) -> dict:
        """The loaded champion, for /readyz."""
        _, version = self.versions.get()
        return {"model": version.name, "version": version.version}

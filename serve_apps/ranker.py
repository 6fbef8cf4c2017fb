"""Ranker deployment: scores candidate articles for a user with the engagement model.

Features come from the Feast online store (SQLite or Redis, as configured) through the
`engagement` feature service: the same definitions that built the model's training set, and the
same preprocessing stored with the model version.
"""

from __future__ import annotations

import asyncio

from ray import serve

from slipway.features.store import FeatureStoreSettings, online_features, open_store
from slipway.models.engagement import features_found
from slipway.models.scoring import predict_proba
from slipway.predictions import json_records
from slipway.registry import Registry
from slipway.storage import Storage


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.1})
class Ranker:
    """Click probabilities of (user, article) pairs, best first."""

    def __init__(self, storage_root: str, model_name: str, feature_store: dict) -> None:
        storage = Storage(storage_root)
        self.model, self.version = Registry(storage).load(model_name, "champion")
        self.store = open_store(FeatureStoreSettings(**feature_store), storage)

    def _rank(self, user_id: int, article_ids: list[int]) -> dict:
        rows = [{"user_id": user_id, "article_id": a} for a in article_ids]
        features = online_features(self.store, rows)
        scores = predict_proba(self.model, self.version, features)
        found = features_found(features)
        ranking = sorted(({"article_id": a, "score": float(s), "features_found": bool(f)}
                          for a, s, f in zip(article_ids, scores, found, strict=True)),
                         key=lambda r: -r["score"])
        return {"model": self.version.name, "version": self.version.version,
                "user_id": user_id, "ranking": ranking,
                "features": json_records(features)}

    async def rank(self, user_id: int, article_ids: list[int]) -> dict:
        """The candidates ordered by click probability, with the features the model saw."""
        return await asyncio.to_thread(self._rank, user_id, article_ids)

    def ready(self) -> dict:
        """The loaded model, for /readyz."""
        return {"model": self.version.name, "version": self.version.version}

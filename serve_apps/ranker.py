"""Ranker deployment: scores candidate articles for a user with the engagement model.

Features come from the Feast online store (SQLite or Redis, as configured) through the
`engagement` feature service: the same definitions that built the model's training set, and the
same preprocessing stored with the model version. The champion alias is followed
(serve_apps/follow.py): a promotion or rollback is served within the app's `follow_interval_s`.
"""

from __future__ import annotations

import asyncio
import threading

from ray import serve

from serve_apps.follow import follow
from slipway.features.store import FeatureStoreSettings, online_features, open_store
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
        self.registry, self.model_name = Registry(storage), model_name
        # Loaded versions by the reference requests use: the champion, and the versions
        # experiment variants name (`engagement@7`), side by side in this replica.
        self.loaded = {"champion": self.registry.load(model_name, "champion")}
        self._loading = threading.Lock()
        self.store = open_store(FeatureStoreSettings(**feature_store), storage)
        follow(self._refresh, follow_interval_s, f"ranker {model_name}")

    def _refresh(self) -> None:
        """Load again each alias whose version moved (a promoted champion): one read of the
        aliases; a numbered version never moves."""
        aliases = self.registry.aliases(self.model_name)
        with self._loading:
            moved = {ref: self.registry.load(self.model_name, ref)
                     for ref, (_, mv) in self.loaded.items()
                     if isinstance(ref, str) and aliases.get(ref) != mv.version}
            if moved:
                self.loaded = {**self.loaded, **moved}

    def _model(self, ref: str | int) -> tuple:
        """The (model, version) `ref` names, loaded on its first request."""
        if ref not in self.loaded:
            with self._loading:
                if ref not in self.loaded:
                    self.loaded = {**self.loaded, ref: self.registry.load(self.model_name, ref)}
        return self.loaded[ref]

    def _rank(self, user_id: int, article_ids: list[int], ref: str | int) -> dict:
        model, version = self._model(ref)  # one version for the whole request
        rows = [{"user_id": user_id, "article_id": a} for a in article_ids]
        features = online_features(self.store, rows)
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
        _, version = self.loaded["champion"]
        return {"model": version.name, "version": version.version}

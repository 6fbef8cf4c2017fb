"""Classifier deployment: the registry's text classifier, with dynamic request batching.

Its `user_config` picks the version (`ref`: alias or number) and the batching settings;
changing it (`serve deploy` with a new user_config) reloads in place without a restart. An alias
is followed (serve_apps/follow.py): a promotion or rollback is served within the app's
`follow_interval_s`. Requests in an experiment name their variant's version (`ref`), held beside
the default (serve_apps/versions.py); one batch may hold several versions' requests. Texts a
version answered before are answered from the replica's cache (serve_apps/cache.py) unless the
client sends `Cache-Control: no-cache`; hits and misses are counted per model.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
from pydantic import Field
from ray import serve
from ray.util.metrics import Counter, Histogram

from serve_apps.cache import AnswerCache
from serve_apps.follow import follow
from serve_apps.versions import Versions
from slipway.config import StrictModel, validate_config
from slipway.models.scoring import predict_labels, predict_proba
from slipway.registry import ModelVersion, Registry
from slipway.storage import Storage


class ClassifierConfig(StrictModel):
    """The classifier's user_config."""

    ref: str | int = "champion"
    max_batch_size: int = Field(default=32, ge=1, description="1 turns batching off")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    cache_entries: int = Field(default=10_000, ge=0, description="texts kept; 0 turns it off")
    cache_ttl_s: float = Field(default=600.0, gt=0, description="seconds an answer is kept")


def answer(mv: ModelVersion, proba: np.ndarray) -> dict:
    """The classify answer for one request's class probabilities."""
    labels = mv.metadata["labels"]
    return {"model": mv.name, "version": mv.version, "predictions": [
        {"label": label, "probabilities": dict(zip(labels, map(float, p), strict=True))}
        for label, p in zip(predict_labels(proba, labels), proba, strict=True)]}


@serve.deployment(user_config=ClassifierConfig().model_dump(), max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.2})
class Classifier:
    """Label probabilities for texts, with the model's name and version."""

    def __init__(self, storage_root: str, model_name: str, follow_interval_s: float) -> None:
        self.model_name = model_name
        # The configured `ref` and the versions experiment variants name, side by side.
        self.versions = Versions(Registry(Storage(storage_root)), model_name,
                                 ClassifierConfig().ref)
        follow(self.versions.refresh, follow_interval_s, f"classifier {model_name}")
        self.cache = AnswerCache(0, 1.0)  # sized by reconfigure
        self.hits = Counter("slipway_cache_hits_total", "Texts answered from the cache",
                            tag_keys=("model",))
        self.misses = Counter("slipway_cache_misses_total", "Texts the model answered",
                              tag_keys=("model",))
        # How many requests @serve.batch merged into each model call: batching at work.
        self.batches = Histogram("slipway_classifier_batch_requests",
                                 "Requests per batched model call", tag_keys=("model",),
                                 boundaries=[1, 2, 4, 8, 16, 32, 64])

    async def reconfigure(self, user_config: dict) -> None:
        """Make the version `ref` names the default (loaded off the event loop) and apply the
        batching and cache settings (a new size or time to live starts an empty cache)."""
        cfg = validate_config(ClassifierConfig, user_config, "Classifier user_config")
        await asyncio.to_thread(self.versions.set_default, cfg.ref)
        if (cfg.cache_entries, cfg.cache_ttl_s) != (self.cache.max_entries, self.cache.ttl_s):
            self.cache = AnswerCache(cfg.cache_entries, cfg.cache_ttl_s)
        self._batch.set_max_batch_size(cfg.max_batch_size)
        self._batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def _predict(self, requests: list[list[str]], refs: list[str | int | None]) -> list[dict]:
        """One forward pass per version the batch's requests name."""
        out: list[dict] = [{}] * len(requests)
        for ref in dict.fromkeys(refs):
            model, mv = self.versions.get(ref)  # kept for its requests, whatever loads meanwhile
            mine = [i for i, r in enumerate(refs) if r == ref]
            proba = predict_proba(model, mv, pd.DataFrame(
                {"text": [t for i in mine for t in requests[i]]}))
            start = 0
            for i in mine:
                out[i] = answer(mv, proba[start:start + len(requests[i])])
                start += len(requests[i])
        return out

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, requests: list[list[str]], refs: list[str | int | None]
                     ) -> list[dict]:
        self.batches.observe(len(requests), tags={"model": self.model_name})
        return await asyncio.to_thread(self._predict, requests, refs)

    async def classify(self, texts: list[str], ref: str | int | None = None,
                       fresh: bool = False) -> dict:
        """Predictions for one request's texts by the version `ref` names (default: the
        configured one): from the cache where that version answered them before (unless
        `fresh`), the rest batched with concurrent requests; `cached` counts the former."""
        mv = None if fresh else self.versions.peek(ref)  # None: not loaded yet, or fresh
        cached = [None] * len(texts) if mv is None else self.cache.get(mv.name, mv.version,
                                                                       texts)
        missing = [t for t, c in zip(texts, cached, strict=True) if c is None]
        if not missing:
            out = {"model": mv.name, "version": mv.version, "predictions": []}
        else:
            out = await self._batch(missing, ref)
            if mv is not None and out["version"] != mv.version:  # moved meanwhile
                cached, missing = [None] * len(texts), texts
                out = await self._batch(texts, ref)
            self.cache.put(out["model"], out["version"], missing, out["predictions"])
        answers = iter(out["predictions"])
        out["predictions"] = [c if c is not None else next(answers) for c in cached]
        out["cached"] = len(texts) - len(missing)
        tags = {"model": self.model_name}
        if out["cached"]:
            self.hits.inc(out["cached"], tags=tags)
        if missing:
            self.misses.inc(len(missing), tags=tags)
        return out

    def ready(self) -> dict:
        """The loaded model and this replica's id, for /readyz."""
        return {"model": self.model_name, "version": self.versions.get()[1].version,
                "replica": serve.get_replica_context().replica_id.unique_id}

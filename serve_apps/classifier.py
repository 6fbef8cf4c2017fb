"""Classifier deployment: the registry's text classifier, with dynamic request batching.

Its `user_config` picks the version (`ref`: alias or number) and the batching settings;
changing it (`serve deploy` with a new user_config) reloads in place without a restart. An alias
is followed (serve_apps/follow.py): a promotion or rollback is served within the app's
`follow_interval_s`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from ray import serve

from serve_apps.follow import follow
from slipway.config import StrictModel, validate_config
from slipway.models.scoring import predict_labels, predict_proba
from slipway.registry import ModelVersion, Registry
from slipway.storage import Storage


class ClassifierConfig(StrictModel):
    """The classifier's user_config."""

    ref: str | int = "champion"
    max_batch_size: int = Field(default=32, ge=1, description="1 turns batching off")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)


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
        self.registry = Registry(Storage(storage_root))
        self.model_name = model_name
        self.ref: str | int = ClassifierConfig().ref
        self.loaded: tuple[Any, ModelVersion] | None = None
        self._loading = threading.Lock()
        follow(self._refresh, follow_interval_s, f"classifier {model_name}")

    def _refresh(self) -> None:
        """Load the version `ref` names now, if it is not the one loaded."""
        with self._loading:
            mv = self.registry.get(self.model_name, self.ref)
            if self.loaded is None or mv.version != self.loaded[1].version:
                self.loaded = self.registry.load(self.model_name, mv.version)

    async def reconfigure(self, user_config: dict) -> None:
        """Load the version `ref` names (if it changed, off the event loop) and apply the
        batching settings."""
        cfg = validate_config(ClassifierConfig, user_config, "Classifier user_config")
        self.ref = cfg.ref
        await asyncio.to_thread(self._refresh)
        self._batch.set_max_batch_size(cfg.max_batch_size)
        self._batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, requests: list[list[str]]) -> list[dict]:
        model, mv = self.loaded  # kept for the whole batch, whatever is loaded meanwhile
        texts = [t for r in requests for t in r]
        proba = await asyncio.to_thread(predict_proba, model, mv, pd.DataFrame({"text": texts}))
        out, start = [], 0
        for r in requests:
            out.append(answer(mv, proba[start:start + len(r)]))
            start += len(r)
        return out

    async def classify(self, texts: list[str]) -> dict:
        """Predictions for one request's texts (batched with concurrent requests)."""
        return await self._batch(texts)

    def ready(self) -> dict:
        """The loaded model and this replica's id, for /readyz."""
        return {"model": self.model_name, "version": self.loaded[1].version,
                "replica": serve.get_replica_context().replica_id.unique_id}

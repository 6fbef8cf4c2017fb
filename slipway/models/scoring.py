"""Scoring rows with a registered model, whatever its task: one call for evaluation and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from slipway.models.engagement import Preprocessor
from slipway.registry import ModelVersion

# What each task's rows must hold, and how its slices are judged by default.
TASK_SLICES = {"engagement": ["user_country", "user_device", "article_topic"],
               "text": ["label_name", "length"]}
TASK_SLICE_METRIC = {"engagement": "roc_auc", "text": "accuracy"}


def predict_proba(model: torch.nn.Module, mv: ModelVersion, rows: pd.DataFrame) -> np.ndarray:
    """Probabilities: (n,) of a click for engagement, (n, classes) for text."""
    task = mv.metadata["task"]
    if task == "engagement":
        prep = Preprocessor(**mv.metadata["preprocessing"])
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(prep.transform(rows)))).numpy()
    if task == "text":
        return model.predict_proba(rows["text"].astype(str).tolist())
    raise ValueError(f"{mv.name} v{mv.version}: unknown task {task!r}")


def predict_labels(proba: np.ndarray, labels: list[str]) -> list[str]:
    """Label names of the most probable class."""
    index = (proba > 0.5).astype(int) if proba.ndim == 1 else proba.argmax(axis=1)
    return [labels[i] for i in index]

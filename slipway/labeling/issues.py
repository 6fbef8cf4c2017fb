"""Likely wrong labels in a labelled set, found by cleanlab on out-of-fold probabilities.

A model that never saw a row predicts it (k-fold: logistic regression on the rows' sentence
embeddings, cleanlab's recommended setup); rows whose given label the model finds implausible,
beyond what the estimated noise rates explain (confident learning), are issues, ranked by label
quality (self-confidence) so a reviewer starts with the likeliest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = 5,
                              seed: int = 0) -> np.ndarray:
    """Each row's class probabilities from a model trained on the other folds."""
    model = LogisticRegression(max_iter=2000, C=1.0)
    return cross_val_predict(model, features, labels, method="predict_proba",
                             cv=StratifiedKFold(folds, shuffle=True, random_state=seed))


def label_issues(labels: np.ndarray, pred_probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The rows likely mislabelled, likeliest first: `row`, `given`, `suggested` (the model's
    label), `quality` (self-confidence in the given label)."""
    rows = find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, pred_probs)
    names = np.asarray(classes)
    return pd.DataFrame({"row": rows, "given": names[labels[rows]],
                         "suggested": names[pred_probs[rows].argmax(axis=1)],
                         "quality": quality[rows]})

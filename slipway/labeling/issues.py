"""Likely wrong labels in a labelled set, found by cleanlab on out-of-fold probabilities.

A model that never saw a row predicts it (k-fold: logistic regression on the rows' sentence
embeddings, cleanlab's recommended setup); rows whose given label the model finds implausible,
beyond what the estimated noise rates explain (confident learning), are issues, ranked by label
quality (self-confidence) so a reviewer starts with the likeliest. Outliers and near-duplicate
rows come from cleanlab's Datalab on the same embeddings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab import Datalab
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


def data_issues(features: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Outliers and near-duplicates among the rows (cleanlab Datalab on their embeddings, its
    default thresholds: far from their nearest neighbours against the spread of such distances,
    or nearer a neighbour than a small share of the median such distance): `row`, `issue`
    (`outlier` or `near_duplicate`), `score` (lower: more severe) and `duplicate_of` (the other
    rows of a near-duplicate set), most severe first within each kind."""
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=features, issue_types={"outlier": {}, "near_duplicate": {}})
    found = lab.get_issues()
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    frames = []
    for kind in ("outlier", "near_duplicate"):
        rows = np.flatnonzero(found[f"is_{kind}_issue"].to_numpy())
        scores = found[f"{kind}_score"].to_numpy()[rows]
        order = np.argsort(scores, kind="stable")
        frames.append(pd.DataFrame({
            "row": rows[order], "issue": kind, "score": scores[order],
            "duplicate_of": [list(map(int, sets[r])) if kind == "near_duplicate" else []
                             for r in rows[order]]}))
    return pd.concat(frames, ignore_index=True)

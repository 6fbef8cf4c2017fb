"""Evaluation of classifiers the way a careful ML engineer would: overall, calibrated, by slice.

Binary and multiclass metrics come from scikit-learn; calibration is the expected calibration
error over equal-width confidence bins with its reliability table; slices whose metric falls
more than a tolerance below the overall value are flagged. Plots are written as PNG files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, macro-F1, ROC-AUC, log-loss and ECE.

    `proba` is (n,) for binary problems (probability of class 1) or (n, classes).
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    full = np.stack([1 - proba, proba], axis=1) if proba.ndim == 1 else proba
    # float32 softmax sums drift from 1: clip away zeros, then normalise in float64, so every
    # row sums to one for scikit-learn's scorers.
    full = np.clip(full, 1e-12, None)
    full = full / full.sum(axis=1, keepdims=True)
    pred = full.argmax(axis=1)
    labels = np.arange(full.shape[1])
    average = "binary" if full.shape[1] == 2 else "macro"
    out = {
        "accuracy": skm.accuracy_score(y_true, pred),
        "precision": skm.precision_score(y_true, pred, average=average, zero_division=0),
        "recall": skm.recall_score(y_true, pred, average=average, zero_division=0),
        "macro_f1": skm.f1_score(y_true, pred, average="macro", labels=labels,
                                 zero_division=0),
        "log_loss": skm.log_loss(y_true, full, labels=labels),
        "ece": calibration_table(y_true, full)[1],
    }
    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"] = float("nan")
    elif full.shape[1] == 2:
        out["roc_auc"] = skm.roc_auc_score(y_true, full[:, 1])
    else:
        out["roc_auc"] = skm.roc_auc_score(y_true, full, multi_class="ovr", labels=labels)
    return {k: float(v) for k, v in out.items()}


def calibration_table(y_true: np.ndarray, proba: np.ndarray, bins: int = 10
                      ) -> tuple[pd.DataFrame, float]:
    """Reliability table (per confidence bin: count, mean confidence, accuracy) and the ECE."""
    full = np.stack([1 - proba, proba], axis=1) if proba.ndim == 1 else proba
    confidence = full.max(axis=1)
    correct = (full.argmax(axis=1) == np.asarray(y_true)).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = pd.DataFrame({"bin": which, "confidence": confidence, "correct": correct}).groupby(
        "bin").agg(count=("correct", "size"), confidence=("confidence", "mean"),
                   accuracy=("correct", "mean")).reindex(range(bins))
    table["lower"], table["upper"] = edges[:-1], edges[1:]
    weights = table["count"].fillna(0) / max(len(confidence), 1)
    ece = float((weights * (table["accuracy"] - table["confidence"]).abs()).fillna(0).sum())
    return table.reset_index(), ece


def slice_metrics(frame: pd.DataFrame, y_true: np.ndarray, proba: np.ndarray,
                  slice_columns: list[str], metric: str = "roc_auc", min_size: int = 30,
                  tolerance: float = 0.05) -> list[dict]:
    """Metrics per value of each slice column; `flagged` when `metric` is below the overall
    value by more than `tolerance`. Slices smaller than `min_size` are reported, not flagged."""
    overall = classification_metrics(y_true, proba)[metric]
    rows = []
    for column in slice_columns:
        values = frame[column].astype("string").fillna("(missing)").to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            result = classification_metrics(np.asarray(y_true)[mask], np.asarray(proba)[mask])
            score = result[metric]
            rows.append({"slice": f"{column}={value}", "size": int(mask.sum()), **result,
                         "flagged": bool(mask.sum() >= min_size and not np.isnan(score)
                                         and score < overall - tolerance)})
    return rows


def plot_reliability(table: pd.DataFrame, path: str) -> None:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    known = table.dropna(subset=["accuracy"])
    ax.plot(known["confidence"], known["accuracy"], marker="o", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(y_true: np.ndarray, pred: np.ndarray, labels: list[str], path: str) -> None:
    """Confusion matrix with counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = skm.confusion_matrix(y_true, pred, labels=np.arange(len(labels)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

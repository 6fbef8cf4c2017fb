"""What a model variant costs and how good it is, measured the same way for every variant:
latency of one text at a time, throughput in batches of 32, macro-F1 and agreement with the
parent on held-out rows, and its size on disk."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score


class TextModel(Protocol):
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def latency_ms(model: TextModel, texts: Sequence[str], calls: int, warmup: int = 5
               ) -> tuple[float, float]:
    """p50 and p99 milliseconds of `calls` one-text predictions (texts in turn)."""
    for i in range(warmup):
        model.predict_proba([texts[i % len(texts)]])
    took = []
    for i in range(calls):
        start = time.perf_counter()
        model.predict_proba([texts[i % len(texts)]])
        took.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(took, 50)), float(np.percentile(took, 99))


def texts_per_s(model: TextModel, texts: Sequence[str], batches: int, batch_size: int = 32
                ) -> float:
    """Texts per second predicting `batches` batches of `batch_size` texts."""
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    model.predict_proba(batch, batch_size=batch_size)  # warm up
    start = time.perf_counter()
    for b in range(batches):
        batch = [texts[(b * batch_size + i) % len(texts)] for i in range(batch_size)]
        model.predict_proba(batch, batch_size=batch_size)
    return batches * batch_size / (time.perf_counter() - start)


def folder_mb(folder: str) -> float:
    """Megabytes of the files under `folder`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
               for f in files) / 1e6


def state_mb(model: Any) -> float:
    """Megabytes of a torch model's weights (what serving it loads, the encoder included)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def quality(proba: np.ndarray, y: np.ndarray, parent_pred: np.ndarray) -> dict[str, float]:
    """Macro-F1 on the true labels and the share of rows predicted as the parent predicts."""
    pred = proba.argmax(1)
    return {"macro_f1": float(f1_score(y, pred, average="macro",
                                       labels=np.arange(proba.shape[1]), zero_division=0)),
            "agreement": float((pred == parent_pred).mean())}


def choose(table: pd.DataFrame, max_f1_loss: float, rank_by: str) -> str:
    """The fastest variant (by `rank_by`) whose macro-F1 is at most `max_f1_loss` below the
    parent's (`fp32`, which is always eligible)."""
    eligible = table[table["macro_f1"] >= table.loc["fp32", "macro_f1"] - max_f1_loss - 1e-12]
    latency = rank_by.endswith("_ms_b1")  # lower is faster; texts/s: higher is
    return str(eligible[rank_by].sort_values(ascending=latency).index[0])


def plot(table: pd.DataFrame, path: str) -> None:
    """Macro-F1 against batch-1 p50 latency and against batch-32 throughput, one point each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, column, label in ((axes[0], "p50_ms_b1", "p50 latency at batch 1 (ms)"),
                              (axes[1], "texts_per_s_b32", "texts/s at batch 32")):
        ax.scatter(table[column], table["macro_f1"])
        for name, row in table.iterrows():
            ax.annotate(f"{name} ({row['size_mb']:.0f} MB)", (row[column], row["macro_f1"]),
                        fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
    axes[0].set_ylabel("macro-F1 (held-out)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

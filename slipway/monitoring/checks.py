"""The checks run on each window against the reference: data drift per feature, embedding drift
of text inputs, prediction drift, and performance once labels have arrived."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn import metrics as skm

from slipway.config import StrictModel
from slipway.evaluation import classification_metrics
from slipway.models.text import DEFAULT_ENCODER
from slipway.monitoring.detectors import (
    Method,
    Result,
    choose_method,
    compare,
    correct,
    domain_classifier,
    is_numeric,
)
from slipway.monitoring.frames import LabelSettings

LOWER_IS_BETTER = frozenset({"ece", "log_loss"})


class FeatureRule(StrictModel):
    """One feature's detector and threshold (a distance, or a test's alpha stays global)."""

    method: Method = "auto"
    threshold: float | None = Field(default=None, gt=0)


class EmbeddingSettings(StrictModel):
    """Embedding drift of a `text` input (used when the served rows have one)."""

    enabled: bool = True
    encoder: str = DEFAULT_ENCODER
    max_length: int = Field(default=128, ge=8)
    threshold: float = Field(default=0.55, gt=0.5, lt=1.0, description="domain classifier AUC")
    max_rows: int = Field(default=2000, ge=20, description="rows per side given the classifier")


class DriftSettings(StrictModel):
    """Data and prediction drift: detectors, thresholds and the multiple-testing correction."""

    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: str = Field(default="bh", pattern="^(bh|bonferroni|none)$")
    large_sample: int = Field(default=1000, ge=10,
                              description="tests up to this many rows, distances above")
    features: list[str] | None = Field(default=None, description="None: every shared input")
    exclude: list[str] = Field(default_factory=lambda: ["user_id", "article_id"])
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="per distance method, e.g. {ks_distance: 0.12}")
    rules: dict[str, FeatureRule] = Field(default_factory=dict, description="per feature")
    prediction: bool = True
    embedding: EmbeddingSettings = EmbeddingSettings()


class PerformanceSettings(StrictModel):
    """Performance per window once labels arrive, against a baseline."""

    enabled: bool = False
    labels: LabelSettings = LabelSettings()
    baseline: dict[str, float] | None = Field(
        default=None, description="None: the metrics measured on the reference")
    tolerances: dict[str, float] = Field(
        default_factory=lambda: {"roc_auc": 0.05, "ece": 0.05},
        description="how much worse than the baseline a metric may get before it is flagged")
    min_labels: int = Field(default=200, ge=10)


def window_checks(window: dict) -> dict[str, dict]:
    """Every drift result of a summarised window, keyed as alerts, gauges and the report key
    them: `feature:<name>`, `prediction:<column>`, `embedding`."""
    out = {f"feature:{k}": v for k, v in window.get("features", {}).items()}
    out.update({f"prediction:{k}": v for k, v in window.get("prediction", {}).items()})
    if window.get("embedding"):
        out["embedding"] = window["embedding"]
    return out


def univariate(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
               settings: DriftSettings) -> dict[str, Result]:
    """One detector per column, chosen by type and size unless a rule names it; the tests'
    p-values are corrected together."""
    results = {}
    for col in columns:
        rule = settings.rules.get(col, FeatureRule())
        ref, cur = reference[col], current[col]
        method = rule.method
        if method == "auto":
            method = choose_method(is_numeric(ref) and is_numeric(cur), int(ref.notna().sum()),
                                   int(cur.notna().sum()), settings.large_sample)
        if ref.notna().sum() < 2 or cur.notna().sum() < 2:
            continue  # nothing to compare: no values on one side
        results[col] = compare(ref, cur, method,
                               rule.threshold or settings.thresholds.get(method))
    return correct(results, settings.alpha, settings.correction)


def prediction_drift(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings
                     ) -> dict[str, Result]:
    """Drift of the model's outputs: the score or label, and the confidence."""
    cols = [c for c in ("prediction", "confidence") if c in reference and c in current]
    return univariate(reference, current, cols, settings)


def embedding_drift(reference: np.ndarray, current: np.ndarray, settings: DriftSettings,
                    seed: int = 0) -> Result:
    """Domain-classifier drift of text embeddings, judged at the global alpha."""
    result = domain_classifier(reference, current, settings.embedding.threshold, seed,
                               settings.embedding.max_rows)
    return correct({"embedding": result}, settings.alpha, "none")["embedding"]


def performance(rows: pd.DataFrame) -> dict[str, float]:
    """Metrics of the labelled rows: a binary model's ROC-AUC, accuracy, ECE and log-loss from
    its scores; a multiclass model's accuracy and macro-F1 from its labels."""
    labelled = rows[rows["label"].notna()]
    if labelled.empty:
        return {}
    if is_numeric(labelled["prediction"]):
        y = labelled["label"].astype(int).to_numpy()
        out = classification_metrics(y, labelled["prediction"].to_numpy(dtype=float))
        return {k: out[k] for k in ("roc_auc", "accuracy", "ece", "log_loss")}
    y, pred = labelled["label"].astype(str), labelled["prediction"].astype(str)
    return {"accuracy": float(skm.accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0))}


def degradation(metrics: dict[str, float], baseline: dict[str, float],
                tolerances: dict[str, float]) -> dict[str, dict]:
    """Per tolerated metric: value, baseline, how much worse, and whether past the tolerance."""
    out = {}
    for name, tolerance in tolerances.items():
        if name not in metrics or name not in baseline or np.isnan(metrics[name]):
            continue
        worse = (metrics[name] - baseline[name]) * (1 if name in LOWER_IS_BETTER else -1)
        out[name] = {"value": metrics[name], "baseline": baseline[name], "worse_by": worse,
                     "tolerance": tolerance, "score": worse / tolerance,
                     "degraded": bool(worse > tolerance)}
    return out

"""Evaluation metrics, calibration and slices on data whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slipway.evaluation import (
    calibration_table,
    classification_metrics,
    plot_confusion,
    plot_reliability,
    slice_metrics,
)


def test_perfect_and_random_binary_scores():
    y = np.array([0, 0, 1, 1] * 50)
    perfect = classification_metrics(y, np.where(y == 1, 0.99, 0.01))
    assert perfect["accuracy"] == 1 and perfect["roc_auc"] == 1 and perfect["macro_f1"] == 1
    assert perfect["ece"] == pytest.approx(0.01)
    flat = classification_metrics(y, np.full(len(y), 0.5))
    assert flat["roc_auc"] == 0.5 and flat["log_loss"] == pytest.approx(np.log(2))


def test_ece_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, len(p)) < p).astype(int)
    assert classification_metrics(y, p)["ece"] < 0.02
    overconfident = np.where(p > 0.5, 0.999, 0.001)
    table, ece = calibration_table(y, overconfident)
    assert ece > 0.2 and table["count"].sum() == len(p)


def test_multiclass_metrics():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    out = classification_metrics(y, proba)
    assert out["accuracy"] == 0.75
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_underperforming_slice_is_flagged_and_small_ones_are_not():
    rng = np.random.default_rng(1)
    n = 2000
    frame = pd.DataFrame({"device": rng.choice(["mobile", "desktop"], n),
                          "country": rng.choice(["US", "DE", "JP"], n, p=[0.495, 0.495, 0.01])})
    y = rng.integers(0, 2, n)
    p = np.where(y == 1, 0.8, 0.2)
    noisy = (frame["device"].to_numpy() == "desktop") | (frame["country"].to_numpy() == "JP")
    p[noisy] = rng.uniform(0, 1, noisy.sum())
    rows = {r["slice"]: r for r in slice_metrics(frame, y, p, ["device", "country"])}
    assert rows["device=desktop"]["flagged"] and not rows["device=mobile"]["flagged"]
    assert rows["country=JP"]["size"] < 30 and not rows["country=JP"]["flagged"]


def test_plots_are_written(tmp_path):
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.7, 0.9, 0.4, 0.3])
    plot_reliability(calibration_table(y, p)[0], str(tmp_path / "rel.png"))
    plot_confusion(y, (p > 0.5).astype(int), ["no click", "click"], str(tmp_path / "cm.png"))
    for name in ("rel.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_float32_softmax_probabilities_score_without_warnings_and_exactly():
    import warnings

    import torch

    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 4, (500, 6)).astype(np.float32))
    proba = torch.softmax(logits, dim=1).numpy()  # float32: rows sum to 1 only roughly
    proba[0] = [1, 0, 0, 0, 0, 0]  # a certain (and wrong) answer: no log(0)
    y = rng.integers(0, 6, 500)
    y[0] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's "y_prob values do not sum to one"
        metrics = classification_metrics(y, proba)
    p64 = proba.astype(np.float64).clip(1e-12)
    p64 /= p64.sum(axis=1, keepdims=True)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log(p64[np.arange(500), y])))
    assert metrics["accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == y))

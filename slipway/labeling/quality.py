"""Annotation quality: how much annotators agree, how good each one is, and each item's consensus.

Annotations are a long table with columns `item`, `annotator`, `label` (a class name). The
statistics come from maintained libraries: Cohen's kappa from scikit-learn, Fleiss' kappa from
statsmodels, Krippendorff's alpha from `krippendorff`, and the consensus with per-annotator
quality from cleanlab's multi-annotator method (CROWDLAB), which weighs each annotator by their
agreement with the others and with a model's predicted probabilities; majority vote is reported
beside it as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
from cleanlab.multiannotator import get_label_quality_multiannotator, get_majority_vote_label
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from slipway.errors import SlipwayError


def label_matrix(annotations: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Items x annotators of class indices (NaN where an annotator left the item). A label
    outside `classes`, or an annotator labelling one item twice, raises naming the item."""
    unknown = annotations[~annotations["label"].isin(classes)]
    if len(unknown):
        row = unknown.iloc[0]
        raise SlipwayError(f"item {row['item']}: label {row['label']!r} by {row['annotator']} "
                           f"is not in the label set {classes}; fix the annotation or the set")
    twice = annotations.duplicated(["item", "annotator"])
    if twice.any():
        row = annotations[twice].iloc[0]
        raise SlipwayError(f"item {row['item']}: {row['annotator']} labelled it more than once; "
                           "keep one annotation per annotator and item")
    codes = annotations.assign(code=annotations["label"].map(
        {c: i for i, c in enumerate(classes)}).astype(float))
    return codes.pivot(index="item", columns="annotator", values="code")


def alpha(reliability: np.ndarray, n_values: int) -> float | None:
    """Krippendorff's alpha (nominal) of annotators x items codes (NaN: not labelled); None when
    the data hold a single value (no disagreement can be expected)."""
    present = reliability[~np.isnan(reliability)]
    if len(np.unique(present)) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal",
                                    value_domain=list(range(n_values))))


def agreement(matrix: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Cohen's kappa per annotator pair (over the items both labelled), Fleiss' kappa over the
    items every annotator labelled, and Krippendorff's alpha (nominal) over every annotation;
    both overall and per class (that class against the rest)."""
    pairs = {}
    for a, b in combinations(matrix.columns, 2):
        both = matrix[[a, b]].dropna()
        pairs[f"{a}|{b}"] = float(cohen_kappa_score(both[a], both[b])) if len(both) else None
    full = matrix.dropna().to_numpy(int)

    def fleiss(codes: np.ndarray, n_categories: int) -> float | None:
        if len(codes) == 0:
            return None
        table, _ = aggregate_raters(codes, n_cat=n_categories)
        return float(fleiss_kappa(table))

    return {
        "cohen_kappa": pairs,
        "fleiss_kappa": fleiss(full, len(classes)),
        "fleiss_kappa_per_class": {c: fleiss((full == i).astype(int), 2)
                                   for i, c in enumerate(classes)},
        "krippendorff_alpha": alpha(matrix.T.to_numpy(float), len(classes)),
        "krippendorff_alpha_per_class": {
            c: alpha(np.where(np.isnan(matrix.T.to_numpy(float)), np.nan,
                              matrix.T.to_numpy(float) == i), 2)
            for i, c in enumerate(classes)},
        "items_fully_labelled": int(len(full)),
    }


def gold_accuracy(annotations: pd.DataFrame, gold: pd.Series) -> pd.Series:
    """Each annotator's accuracy on the gold items (`gold`: the known label by item)."""
    on_gold = annotations[annotations["item"].isin(gold.index)]
    right = on_gold["label"].to_numpy() == gold.reindex(on_gold["item"]).to_numpy()
    return pd.Series(right, index=on_gold["annotator"].to_numpy()).groupby(level=0).mean()


@dataclass
class Consensus:
    """Per item: `label` (CROWDLAB's consensus, a class index), `quality` (its confidence in
    that label), `majority` (majority vote, ties broken by the model), `agreement` (share of the
    item's annotators who chose the consensus); per annotator: `annotators` (CROWDLAB quality,
    agreement with the consensus, worst class)."""

    items: pd.DataFrame
    annotators: pd.DataFrame

    def weak(self, threshold: float) -> pd.Index:
        """Items whose consensus quality is below `threshold`: worth another label."""
        return self.items.index[self.items["quality"] < threshold]


def consensus(matrix: pd.DataFrame, pred_probs: np.ndarray) -> Consensus:
    """CROWDLAB's consensus labels and annotator quality, with majority vote beside them.
    `pred_probs`: a model's out-of-fold class probabilities for the matrix's items, in order."""
    result = get_label_quality_multiannotator(matrix, pred_probs, verbose=False)
    quality = result["label_quality"]
    items = pd.DataFrame({
        "label": quality["consensus_label"].to_numpy(),
        "quality": quality["consensus_quality_score"].to_numpy(),
        "majority": get_majority_vote_label(matrix, pred_probs, verbose=False),
        "agreement": quality["annotator_agreement"].to_numpy()}, index=matrix.index)
    annotators = result["annotator_stats"].rename(columns={
        "annotator_quality": "quality", "agreement_with_consensus": "agreement"})
    return Consensus(items, annotators[["quality", "agreement", "worst_class"]])

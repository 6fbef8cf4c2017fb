"""Which items to send to annotators next, within a budget.

Three kinds of picks share the budget: `gold` items with known answers (annotator QA), `relabel`
picks among already-labelled items whose label is least certain (cleanlab's ActiveLab scores,
which weigh the annotators' agreement against the model), and `uncertain` picks among unlabelled
items, most uncertain first (margin or entropy of the model's probabilities), skipping any item
too similar to one already picked (cosine similarity of their embeddings above `max_similarity`)
so a batch is not fifty near-copies. Items already labelled for this round or in flight are
never picked again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from cleanlab.multiannotator import get_active_learning_scores
from pydantic import Field
from scipy.stats import entropy

from slipway.config import StrictModel


class SelectionSettings(StrictModel):
    """How a labeling budget is spent."""

    budget: int = Field(ge=1, description="items per round")
    uncertainty: Literal["margin", "entropy"] = "margin"
    max_similarity: float = Field(default=0.9, gt=0, le=1,
                                  description="cosine similarity above which two items are near "
                                              "copies: only the more uncertain is picked")
    relabel_share: float = Field(default=0.0, ge=0, lt=1,
                                 description="share of the budget for another label on labelled "
                                             "items")
    gold_share: float = Field(default=0.1, ge=0, lt=1,
                              description="share of known-answer items, for annotator QA")
    seed: int = 0


def uncertainty(probs: np.ndarray, method: str) -> np.ndarray:
    """Per row, higher is more uncertain: 1 - (top - second) probability, or the entropy
    normalised by its maximum (log of the number of classes)."""
    if method == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return 1 - (top2[:, 1] - top2[:, 0])
    return entropy(probs, axis=1) / np.log(probs.shape[1])


def spread(order: Sequence[int], embeddings: np.ndarray, count: int, max_similarity: float
           ) -> list[int]:
    """The first `count` rows of `order` (best first) that are no nearer than `max_similarity`
    (cosine) to a row already taken."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    taken: list[int] = []
    for row in order:
        if len(taken) == count:
            break
        if not taken or (unit[taken] @ unit[row]).max() <= max_similarity:
            taken.append(row)
    return taken


def select(items: np.ndarray, probs: np.ndarray, embeddings: np.ndarray,
           settings: SelectionSettings, exclude: Collection = (),
           labelled: pd.DataFrame | None = None, labelled_probs: np.ndarray | None = None,
           gold: Sequence = ()) -> pd.DataFrame:
    """The round's picks: `item`, `reason` (gold, relabel, uncertain) and `score`.

    `items`, `probs`, `embeddings`: the unlabelled pool, row for row; `exclude`: item ids in
    flight or already labelled this round; `labelled`: items x annotators of class indices (NaN
    where an annotator left an item) with the model's `labelled_probs` for them; `gold`: ids of
    known-answer items."""
    rng = np.random.default_rng(settings.seed)
    excluded = set(exclude)
    picks: list[dict] = []
    gold_pool = [g for g in gold if g not in excluded]
    n_gold = min(round(settings.gold_share * settings.budget), len(gold_pool))
    for g in rng.choice(np.asarray(gold_pool, dtype=object), n_gold, replace=False):
        picks.append({"item": g, "reason": "gold", "score": np.nan})
    if labelled is not None and len(labelled) and settings.relabel_share:
        scores, _ = get_active_learning_scores(labelled, labelled_probs)
        open_rows = [i for i, item in enumerate(labelled.index) if item not in excluded]
        n_relabel = round(settings.relabel_share * settings.budget)
        for i in sorted(open_rows, key=lambda i: scores[i])[:n_relabel]:
            picks.append({"item": labelled.index[i], "reason": "relabel",
                          "score": float(scores[i])})
    taken = {p["item"] for p in picks} | excluded
    open_rows = [i for i, item in enumerate(items) if item not in taken]
    score = uncertainty(probs, settings.uncertainty)
    order = sorted(open_rows, key=lambda i: -score[i])
    for i in spread(order, embeddings, settings.budget - len(picks), settings.max_similarity):
        picks.append({"item": items[i], "reason": "uncertain", "score": float(score[i])})
    return pd.DataFrame(picks, columns=["item", "reason", "score"])

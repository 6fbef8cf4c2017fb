"""Simulated annotators of known noise, for tests, benchmarks and the demo's labeling round.

Each annotator labels every item they are given with the true class, except a share `rate` of
items chosen at random, which get another class chosen uniformly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flipped(truth: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator
            ) -> np.ndarray:
    """Class indices `truth` with a `rate` share changed to another class at random."""
    flip = rng.random(len(truth)) < rate
    return np.where(flip, (truth + rng.integers(1, n_classes, len(truth))) % n_classes, truth)


def annotate(items: np.ndarray, truth: np.ndarray, classes: list[str], noise: dict[str, float],
             seed: int) -> pd.DataFrame:
    """Every annotator of `noise` ({name: flip rate}) labels every item: the long table
    `item`, `annotator`, `label` (class names)."""
    rng = np.random.default_rng(seed)
    names = np.asarray(classes)
    return pd.concat([pd.DataFrame({"item": items, "annotator": name,
                                    "label": names[flipped(truth, rate, len(classes), rng)]})
                      for name, rate in noise.items()], ignore_index=True)

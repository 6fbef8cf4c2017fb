"""The engagement (click) model: an MLP over the feature service `engagement`.

Preprocessing is data, not code: means, standard deviations and category vocabularies fitted on
the training split are stored as JSON with the model, so serving transforms features exactly as
training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from slipway.features.columns import VIEW_COLUMNS
from slipway.models.layers import mlp
from slipway.registry import architecture

CATEGORICAL = ("user_country", "user_device", "article_topic")
NUMERIC = tuple(f.name for fields in VIEW_COLUMNS.values() for f in fields
                if f.name not in CATEGORICAL)


def features_found(features: pd.DataFrame) -> pd.Series:
    """Per row, whether the store had any feature for it (false: an unknown user and article,
    scored on defaults)."""
    return features[list(NUMERIC + CATEGORICAL)].notna().any(axis=1)


@dataclass
class Preprocessor:
    """Standardizes numeric features (missing: 0 after scaling, plus a flag) and one-hot
    encodes categories (unknown: all zeros)."""

    means: dict[str, float]
    stds: dict[str, float]
    vocab: dict[str, list[str]]

    @classmethod
    def fit(cls, df: pd.DataFrame) -> Preprocessor:
        """Fit on a training frame holding every feature column."""
        numeric = df[list(NUMERIC)].astype("float64")
        stds = numeric.std().fillna(1.0).replace(0.0, 1.0)
        vocab = {c: sorted(df[c].dropna().astype(str).unique().tolist()) for c in CATEGORICAL}
        return cls(means=numeric.mean().fillna(0.0).to_dict(), stds=stds.to_dict(), vocab=vocab)

    @property
    def width(self) -> int:
        """Number of model inputs."""
        return 2 * len(NUMERIC) + sum(len(v) for v in self.vocab.values())

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Model inputs (float32, one row per frame row)."""
        numeric = df[list(NUMERIC)].astype("float64")
        missing = numeric.isna().to_numpy(np.float32)
        # Positional arrays in NUMERIC order: stored dicts come back from JSON with sorted keys,
        # and label-aligned pandas arithmetic would reorder the columns.
        means = np.array([self.means[c] for c in NUMERIC])
        stds = np.array([self.stds[c] for c in NUMERIC])
        scaled = np.nan_to_num((numeric.to_numpy() - means) / stds, nan=0.0)
        parts = [scaled.astype(np.float32), missing]
        for col in CATEGORICAL:
            values = df[col].astype("string").fillna("").to_numpy(dtype=object)
            parts.append(np.stack([values == v for v in self.vocab[col]], axis=1)
                         .astype(np.float32) if self.vocab[col]
                         else np.zeros((len(df), 0), np.float32))
        return np.concatenate(parts, axis=1)

    def to_dict(self) -> dict:
        """JSON-ready form, stored with the model version."""
        return asdict(self)


@architecture("EngagementMLP")
class EngagementMLP(nn.Module):
    """Feed-forward click model returning one logit per example."""

    def __init__(self, in_features: int, hidden: list[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.net = mlp(in_features, hidden, dropout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Click logits, shape (batch,)."""
        return self.net(x).squeeze(-1)

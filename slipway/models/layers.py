"""Building blocks shared by the platform's models."""

from __future__ import annotations

from torch import nn


def mlp(in_features: int, hidden: list[int], dropout: float, out_features: int) -> nn.Sequential:
    """Linear layers with ReLU and dropout between them."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)

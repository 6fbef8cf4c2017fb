"""Deterministic, sticky assignment of units to variants.

A unit's bucket is a hash of (salt, unit id) into [0, 1): the same unit always lands in the same
bucket, and experiments with different salts hash independently. Each treatment owns a fixed
slot of the bucket space (treatment k: [k * s, k * s + weight), s = 1 / (variants - 1)) and the
control takes every other bucket, so ramping a treatment's weight up only moves control units
into it: whoever had a treatment keeps it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from slipway.experiments.config import Experiment, Variant

SCALE = float(16 ** 15)


def bucket(salt: str, unit: str) -> float:
    """The unit's position in [0, 1) for this salt (SHA-256, uniform, stable across runs)."""
    digest = hashlib.sha256(f"{salt}:{unit}".encode()).hexdigest()
    return int(digest[:15], 16) / SCALE


def targeted(experiment: Experiment, attributes: dict[str, str | None]) -> bool:
    """Whether a unit with these attributes (`country`, `device`) may enter."""
    rules = experiment.targeting
    return ((not rules.countries or attributes.get("country") in rules.countries)
            and (not rules.devices or attributes.get("device") in rules.devices))


def assign(experiment: Experiment, unit: str, attributes: dict[str, str | None],
           now: datetime) -> Variant | None:
    """The unit's variant, or None when it is not in the experiment (killed, outside its dates,
    not targeted): such a request gets the control's model and is not an exposure."""
    if experiment.killed or not (experiment.start <= now < experiment.end):
        return None
    if not targeted(experiment, attributes):
        return None
    position = bucket(experiment.salt or experiment.name, unit)
    slot = 1 / (len(experiment.variants) - 1)
    for k, variant in enumerate(experiment.variants[1:]):
        if k * slot <= position < k * slot + variant.weight:
            return variant
    return experiment.control

"""Behavioural checks of a text classifier, as data in config (in the spirit of CheckList).

- Minimum functionality: short, unambiguous texts with the label any usable model must give.
- Invariance: edits that must not change the prediction: explicit variants of a text, and
  named perturbations applied to every minimum-functionality text (`lowercase`, `uppercase`,
  `strip_punctuation`, `prefix:<text>`, `suffix:<text>`).

The report lists every case with pass/fail; the checks pass when each kind's pass rate reaches
`min_pass_rate`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, field_validator

from slipway.config import ConfigError, StrictModel, validate_config


class FunctionalityCase(StrictModel):
    """A text and the label it must get."""

    text: str = Field(min_length=1)
    label: str


class InvarianceCase(StrictModel):
    """A text and edits of it that must get the same label."""

    text: str = Field(min_length=1)
    variants: list[str] = Field(min_length=1)


class BehaviourChecks(StrictModel):
    """The checks of one classifier."""

    min_pass_rate: float = Field(default=1.0, ge=0, le=1)
    min_functionality: list[FunctionalityCase] = Field(default_factory=list)
    invariance: list[InvarianceCase] = Field(default_factory=list)
    perturbations: list[str] = Field(default_factory=list)

    @field_validator("perturbations")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            perturb(name, "x")
        return value


def perturb(name: str, text: str) -> str:
    """Apply a named perturbation to `text`."""
    kind, _, arg = name.partition(":")
    if kind == "lowercase":
        return text.lower()
    if kind == "uppercase":
        return text.upper()
    if kind == "strip_punctuation":
        return text.translate(str.maketrans("", "", string.punctuation))
    if kind == "prefix" and arg:
        return f"{arg.strip()} {text}"
    if kind == "suffix" and arg:
        return f"{text} {arg.strip()}"
    raise ValueError(f"unknown perturbation {name!r}; use lowercase, uppercase, "
                     "strip_punctuation, prefix:<text> or suffix:<text>")


def load_checks(path: str) -> BehaviourChecks:
    """Read checks from a YAML file, with errors naming the key and the file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"behaviour checks file {path} not found") from None
    return validate_config(BehaviourChecks, data, path)


def run_checks(checks: BehaviourChecks, predict: Callable[[list[str]], list[str]]) -> dict:
    """Run every case through `predict` (texts -> label names); the report with pass/fail."""
    mft = checks.min_functionality
    pairs = [(c.text, v) for c in checks.invariance for v in c.variants]
    pairs += [(c.text, perturb(p, c.text)) for c in mft for p in checks.perturbations]
    texts = [c.text for c in mft] + [a for a, _ in pairs] + [b for _, b in pairs]
    labels = predict(texts) if texts else []
    got_mft, got_a, got_b = (labels[:len(mft)], labels[len(mft):len(mft) + len(pairs)],
                             labels[len(mft) + len(pairs):])
    cases = [{"kind": "min_functionality", "text": c.text, "expected": c.label, "got": g,
              "passed": g == c.label} for c, g in zip(mft, got_mft, strict=True)]
    cases += [{"kind": "invariance", "text": b, "original": a, "expected": ga, "got": gb,
               "passed": ga == gb} for (a, b), ga, gb in zip(pairs, got_a, got_b, strict=True)]
    rates = {}
    for kind in ("min_functionality", "invariance"):
        mine = [c["passed"] for c in cases if c["kind"] == kind]
        rates[kind] = sum(mine) / len(mine) if mine else 1.0
    return {"pass_rates": rates, "min_pass_rate": checks.min_pass_rate, "cases": cases,
            "passed": all(r >= checks.min_pass_rate for r in rates.values())}

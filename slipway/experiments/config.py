"""An experiment's declaration (`configs/experiments/*.yaml`), validated by pydantic.

The first variant is the control. Each variant names what answers for it: a registry reference
`NAME@REF` of the route's model: the ranker (`engagement@champion`, `engagement@7`) on /v1/rank,
the text classifier (`article_topic@3`) on /v1/classify, a generator adapter
(`articles_lora@champion`) on /v1/rag. Weights sum to 1; a
non-control variant owns a fixed slot of the bucket space (see `assignment`), so it can take at
most 1/(variants - 1) of the traffic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slipway.config import StrictModel, UtcDatetime

NAME = r"^[A-Za-z0-9_-]+$"
# The randomisation unit each route may use: a field of its request, or the API key's name.
UNITS = {"/v1/rank": ("user_id", "api_key"), "/v1/classify": ("api_key", "user_id"),
         "/v1/rag": ("api_key", "user_id")}
# Per-unit metrics from the outcome events: (numerator event, denominator event or None).
METRICS: dict[str, tuple[str, str | None]] = {
    "clicks": ("click", None),
    "ctr": ("click", "impression"),
    "dwell_seconds": ("dwell", None),
    "conversions": ("conversion", None),
    "impressions": ("impression", None),
}


class Variant(StrictModel):
    """One arm: its name, the model version answering for it and its share of units."""

    name: str = Field(pattern=NAME)
    model: str = Field(description="registry reference NAME@REF, e.g. engagement@champion")
    weight: float = Field(gt=0, le=1)

    @field_validator("model")
    @classmethod
    def _reference(cls, model: str) -> str:
        name, at, ref = model.partition("@")
        if not (name and at and ref):
            raise ValueError(f"{model!r} is not NAME@REF; write e.g. engagement@champion or "
                             "engagement@7")
        return model

    @property
    def model_name(self) -> str:
        """The registry model name."""
        return self.model.partition("@")[0]

    @property
    def ref(self) -> str | int:
        """The version number or alias."""
        ref = self.model.partition("@")[2]
        return int(ref) if ref.isdigit() else ref


class Targeting(StrictModel):
    """Which units may enter (empty: everyone); the others get the control, unlogged."""

    countries: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)


class Guardrails(StrictModel):
    """Limits a shipped variant must respect, judged apart from the primary metric."""

    max_p99_latency_ratio: float = Field(default=1.5, gt=0,
                                         description="variant p99 latency / control p99")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    no_drop: list[str] = Field(default_factory=list,
                               description="metrics whose relative effect must stay above "
                                           "-drop_margin (lower confidence bound)")
    drop_margin: float = Field(default=0.05, ge=0)


class Experiment(StrictModel):
    """An A/B(/n) test on one route."""

    name: str = Field(pattern=NAME)
    route: Literal["/v1/rank", "/v1/classify", "/v1/rag"]
    unit: str = Field(default="user_id", description="randomisation unit (UNITS per route); a "
                                                     "request without it is not an exposure")
    salt: str | None = Field(default=None, description="assignment salt (default: the name)")
    variants: list[Variant] = Field(min_length=2)
    start: UtcDatetime
    end: UtcDatetime
    primary_metric: str = "clicks"
    secondary_metrics: list[str] = Field(default_factory=list)
    guardrails: Guardrails = Guardrails()
    targeting: Targeting = Targeting()
    killed: bool = Field(default=False, description="kill switch: everyone gets the control")

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
        return metric

    @field_validator("secondary_metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for metric in metrics:
            cls._known_metric(metric)
        return metrics

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        total = sum(v.weight for v in self.variants)
        if abs(total - 1) > 1e-9:
            raise ValueError(f"variants: weights must sum to 1, they sum to {total:g}")
        slot = 1 / (len(self.variants) - 1)
        for v in self.variants[1:]:
            if v.weight > slot + 1e-12:
                raise ValueError(f"variants: {v.name} has weight {v.weight:g}; with "
                                 f"{len(self.variants)} variants each treatment may take at "
                                 f"most {slot:g}")
        if self.unit not in UNITS[self.route]:
            raise ValueError(f"unit: {self.unit!r} cannot randomise {self.route}; use one of "
                             f"{list(UNITS[self.route])}")
        if self.end <= self.start:
            raise ValueError("end: must be after start")
        return self

    @property
    def control(self) -> Variant:
        """The first variant."""
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        """A variant by name."""
        return next(v for v in self.variants if v.name == name)

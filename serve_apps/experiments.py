"""The experiments the ingress serves, followed on the storage root.

`jobs.experiment` publishes a declaration under `<root>/experiments/`; every ingress replica
re-reads them every `follow_interval_s` (serve_apps/follow.py), so an experiment starts, ramps
or is killed without a redeploy. Assignment itself is a hash (slipway.experiments.assignment):
no state, the same answer on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from serve_apps.follow import follow
from slipway.experiments.assignment import assign
from slipway.experiments.config import Experiment, Variant
from slipway.experiments.store import live, published
from slipway.storage import Storage


@dataclass(frozen=True)
class Exposure:
    """A request in an experiment: which, the variant that answers it, and the unit's id."""

    experiment: Experiment
    variant: Variant
    unit: str

    @property
    def logged(self) -> tuple[str, str, str]:
        """The prediction log's (experiment, variant, unit)."""
        return self.experiment.name, self.variant.name, self.unit


class Experiments:
    """The live experiment of each route, kept current by a follower thread."""

    def __init__(self, storage: Storage, follow_interval_s: float) -> None:
        self.storage = storage
        self.by_route: dict[str, Experiment] = {}
        self._refresh()
        follow(self._refresh, follow_interval_s, "experiments")

    def _refresh(self) -> None:
        now = datetime.now(timezone.utc)
        self.by_route = {e.route: e for e in published(self.storage) if live(e, now)}

    def assign(self, route: str, units: dict[str, str | None],
               attributes: dict[str, str | None]) -> Exposure | None:
        """The route's live experiment and this request's variant, or None (no exposure: no
        experiment, a request without the experiment's unit, not targeted). `units`: the
        request's value of each unit kind (`user_id`, `api_key`)."""
        experiment = self.by_route.get(route)
        unit = units.get(experiment.unit) if experiment else None
        if unit is None:
            return None
        variant = assign(experiment, unit, attributes, datetime.now(timezone.utc))
        return Exposure(experiment, variant, unit) if variant else None

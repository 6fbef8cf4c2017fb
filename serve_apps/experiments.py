"""The experiments the ingress serves, followed on the storage root.

`jobs.experiment` publishes a declaration under `<root>/experiments/`; every ingress replica
re-reads them every `follow_interval_s` (serve_apps/follow.py), so an experiment starts, ramps
or is killed without a redeploy. Assignment itself is a hash (slipway.experiments.assignment):
no state, the same answer on every replica.
"""

from __future__ import annotations

from datetime import datetime, timezone

from serve_apps.follow import follow
from slipway.experiments.assignment import assign
from slipway.experiments.config import Experiment, Variant
from slipway.experiments.store import live, published
from slipway.storage import Storage


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

    def unit(self, route: str) -> str | None:
        """The randomisation unit of the route's live experiment."""
        experiment = self.by_route.get(route)
        return experiment.unit if experiment else None

    def assign(self, route: str, unit: str, attributes: dict[str, str | None]
               ) -> tuple[Experiment, Variant] | None:
        """The route's live experiment and the unit's variant, or None (no exposure)."""
        experiment = self.by_route.get(route)
        if experiment is None:
            return None
        variant = assign(experiment, unit, attributes, datetime.now(timezone.utc))
        return (experiment, variant) if variant else None

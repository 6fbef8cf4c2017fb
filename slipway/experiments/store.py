"""Experiments on the storage root, where the running app finds them.

    experiments/<name>/experiment.json     the declaration the app serves (published)
    experiments/<name>/analysis/<run>.json  each analysis's summary; report.html beside it

Publishing checks what a running app cannot: each variant's model version exists, and no other
live experiment randomises the same route. The app re-reads the folder every
`follow_interval_s`, so starting, ramping and killing need no redeploy.
"""

from __future__ import annotations

from datetime import datetime, timezone

from slipway.errors import SlipwayError
from slipway.experiments.config import Experiment
from slipway.registry import Registry, RegistryError
from slipway.storage import Storage


def published(storage: Storage) -> list[Experiment]:
    """Every published experiment, by name."""
    found = [uri for uri in storage.list_files("experiments")
             if uri.endswith("/experiment.json")]
    prefix = storage.uri() + "/"
    return sorted((Experiment.model_validate(storage.read_json(*uri.removeprefix(prefix)
                                                                .split("/")))
                   for uri in found), key=lambda e: e.name)


def live(experiment: Experiment, now: datetime) -> bool:
    """Running now: inside its dates and not killed."""
    return not experiment.killed and experiment.start <= now < experiment.end


def publish(storage: Storage, experiment: Experiment) -> str:
    """Check `experiment` against the registry and the other experiments, then publish it (a
    new one, or new weights, dates or kill switch for a running one); return its URI."""
    registry = Registry(storage)
    model_name = experiment.control.model_name
    for variant in experiment.variants:
        if variant.model_name != model_name:
            raise SlipwayError(f"variants: {variant.name} names model {variant.model_name!r}; "
                               f"every variant must be a version of {model_name!r}")
        try:
            registry.get(variant.model_name, variant.ref)
        except RegistryError as exc:
            raise SlipwayError(f"variants: {variant.name}: {exc}") from None
    now = datetime.now(timezone.utc)
    for other in published(storage) if live(experiment, now) else ():  # killing is always fine
        if other.name != experiment.name and other.route == experiment.route and live(other, now):
            raise SlipwayError(f"experiment {other.name!r} already randomises "
                               f"{experiment.route} until {other.end:%Y-%m-%d %H:%M}; kill it "
                               "(killed: true) or end it first")
    return storage.write_json(experiment.model_dump(mode="json"), "experiments",
                              experiment.name, "experiment.json")

"""Analyse an experiment: exposures from the prediction log, outcomes from the events table.

    python -m jobs.analyze_experiment --config configs/experiments/ranker_ab.yaml

Checks the sample ratio first (no winner while it is off), then per metric and variant the
effect with its interval (Welch, or the delta method for ratio metrics), CUPED with each user's
pre-experiment CTR from the feature store, the always-valid sequential test, Holm (or BH)
correction and the guardrails. Writes a JSON summary and an HTML report under
`<root>/experiments/<name>/analysis/`, logs a W&B run and prints the decision. A `ship` decision
makes the winner the champion, recording the experiment in the version's lineage.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from jobs.experiment import ExperimentConfig
from slipway.cli import JobFailed, run_job
from slipway.experiments.analysis import analyze, unit_table
from slipway.experiments.events import read_events
from slipway.experiments.report import plots, render
from slipway.features.settings import FeatureStoreSettings
from slipway.features.store import open_store, user_features
from slipway.predictions import read_log
from slipway.registry import Registry
from slipway.storage import Storage
from slipway.tracking import track_run

DECISIONS = ("invalid", "keep control", "keep running", "ship")


def covariate(storage: Storage, cfg: ExperimentConfig, units: pd.Index) -> pd.Series | None:
    """Each unit's `cfg.covariate` as of the experiment's start (point-in-time), or None."""
    if cfg.covariate is None or cfg.experiment.unit != "user_id":
        return None
    users = pd.DataFrame({"user_id": units.astype("int64"),
                          "event_timestamp": pd.Timestamp(cfg.experiment.start)})
    rows = user_features(open_store(FeatureStoreSettings(), storage), users, [cfg.covariate])
    return pd.Series(rows[cfg.covariate].to_numpy(), index=rows["user_id"].astype(str))


def ship(storage: Storage, cfg: ExperimentConfig, summary: dict[str, Any], path: str) -> int:
    """Make the winner champion, with the experiment beside its version; return the version."""
    registry = Registry(storage)
    variant = cfg.experiment.variant(summary["winner"])
    version = registry.get(variant.model_name, variant.ref).version
    registry.write_file(variant.model_name, version, json.dumps(summary, default=str).encode(),
                        "experiments", f"{cfg.experiment.name}.json")
    registry.set_alias(variant.model_name, "champion", version,
                       reason=f"experiment {cfg.experiment.name}: {summary['reasons'][0]} "
                              f"({path})")
    return version


def main(cfg: ExperimentConfig) -> dict[str, Any]:
    """Analyse, report and (on `ship`) promote; return the summary."""
    storage = Storage(cfg.storage.root)
    e = cfg.experiment
    with track_run("analyze_experiment", cfg, storage) as run:
        log = read_log(storage, e.route, experiment=e.name)
        if log.num_rows == 0:
            raise JobFailed(f"no exposures of experiment {e.name!r} in the {e.route} log under "
                            f"{storage.uri('predictions')}; publish it (jobs.experiment) and "
                            "send traffic first")
        exposures = log.select(["request_id", "timestamp", "variant", "unit", "latency_ms",
                                "status"]).to_pandas()
        events = read_events(storage)
        units = unit_table(exposures, events, e.unit == "user_id")
        summary = analyze(e, exposures, events, covariate(storage, cfg, units.index),
                          cfg.analysis, datetime.now(timezone.utc))
        folder = ("experiments", e.name, "analysis")
        storage.write_whole(render(summary, plots(summary, units, exposures,
                                                  cfg.analysis.look_every)).encode(),
                            *folder, f"{run.run_id}.html")
        summary["report"] = storage.uri(*folder, f"{run.run_id}.html")
        if summary["decision"] == "ship" and cfg.ship:
            summary["shipped_version"] = ship(storage, cfg, summary, summary["report"])
        storage.write_json(summary, *folder, f"{run.run_id}.json")
        primary = e.primary_metric
        run.log({"decision": DECISIONS.index(summary["decision"]), "units": summary["units"],
                 "srm_p_value": summary["srm"]["p_value"],
                 **{f"{v}/{primary}/relative": r[primary]["relative"]
                    for v, r in summary["metrics"].items()},
                 **{f"{v}/{primary}/p_adjusted": r[primary]["p_adjusted"]
                    for v, r in summary["metrics"].items()}})
    print(f"experiment {e.name}: {summary['decision']}"
          + (f" -> {summary['winner']} is champion v{summary['shipped_version']}"
             if "shipped_version" in summary else ""))
    for reason in summary["reasons"]:
        print(f"  {reason}")
    print(f"report: {summary['report']}")
    return summary


if __name__ == "__main__":
    run_job(ExperimentConfig, main, __doc__)

"""Publish an experiment to the running app: start it, change its weights or dates, or kill it.

The declaration (`configs/experiments/*.yaml`, section `experiment`) is checked against the
registry (every variant's version exists) and the other experiments (one live experiment per
route), then written under `<root>/experiments/<name>/`. The app follows it within its
`follow_interval_s`: no redeploy. `--set experiment.killed=true` sends everyone to the champion.
"""

from __future__ import annotations

from pydantic import Field

from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.experiments.analysis import AnalysisSettings
from slipway.experiments.config import Experiment
from slipway.experiments.store import publish
from slipway.storage import Storage


class ExperimentConfig(JobConfig):
    """One experiment: its declaration and how it is analysed (jobs.analyze_experiment)."""

    experiment: Experiment
    analysis: AnalysisSettings = AnalysisSettings()
    ship: bool = Field(default=True, description="on a ship decision, make the winner champion")
    covariate: str | None = Field(
        default="user_ctr_30d", description="user_engagement feature as of the start, for CUPED "
                                            "(None: no CUPED)")


def main(cfg: ExperimentConfig) -> str:
    """Publish the experiment; return its URI."""
    uri = publish(Storage(cfg.storage.root), cfg.experiment)
    e = cfg.experiment
    state = "killed (everyone gets the champion)" if e.killed else (
        ", ".join(f"{v.name}={v.model} {v.weight:.0%}" for v in e.variants))
    print(f"experiment {e.name} on {e.route}: {state}; {e.start:%Y-%m-%d %H:%M} to "
          f"{e.end:%Y-%m-%d %H:%M} UTC -> {uri}")
    return uri


if __name__ == "__main__":
    run_job(ExperimentConfig, main, __doc__)

"""Promote the challenger to champion if it beats the champion on the same held-out rows.

The gate scores both versions on the challenger's held-out split: the challenger must beat the
champion on `metric` by at least `margin` (with no champion yet, reach `min_value`) and, for a
text classifier with `behaviour_checks`, pass its behavioural checks. Otherwise the job says why
and exits non-zero. `--set rollback=true` moves `champion` back to the version
it pointed at before.
"""

from __future__ import annotations

from pydantic import Field

from jobs.evaluate import EvaluateConfig
from jobs.evaluate import main as evaluate
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.registry import Registry, RegistryError
from slipway.storage import Storage
from slipway.tracking import track_run


class PromoteConfig(JobConfig):
    """The promotion gate."""

    model_name: str = "engagement"
    metric: str = "roc_auc"
    higher_is_better: bool = True
    margin: float = Field(default=0.005, ge=0)
    min_value: float | None = Field(default=0.55, description="floor when there is no champion")
    behaviour_checks: str | None = Field(default=None,
                                         description="YAML file of behavioural checks (text)")
    rollback: bool = False


def main(cfg: PromoteConfig) -> int:
    """Apply the gate (or roll back) and return the champion's version."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("promote", cfg, storage) as run:
        if cfg.rollback:
            try:
                version = registry.rollback(cfg.model_name)
            except RegistryError as exc:
                raise JobFailed(str(exc)) from None
            print(f"{cfg.model_name}: champion rolled back to v{version}")
            run.log({"champion_version": version})
            return version
        ev = evaluate(EvaluateConfig(storage=cfg.storage, tracking=cfg.tracking,
                                     model_name=cfg.model_name, ref="challenger",
                                     against="champion", behaviour_checks=cfg.behaviour_checks))
        sign = 1 if cfg.higher_is_better else -1
        new = ev.metrics[cfg.metric]
        if ev.against is None:
            passed = cfg.min_value is None or sign * (new - cfg.min_value) >= 0
            why = (f"challenger v{ev.version.version} {cfg.metric} {new:.4f} vs floor "
                   f"min_value {cfg.min_value}")
        else:
            old = ev.against[cfg.metric]
            passed = sign * (new - old) >= cfg.margin and ev.version.version != ev.against[
                "version"]
            why = (f"challenger v{ev.version.version} {cfg.metric} {new:.4f} vs champion "
                   f"v{ev.against['version']} {old:.4f} on the same held-out "
                   f"rows; required margin {cfg.margin}")
        if ev.behaviour is not None and not ev.behaviour["passed"]:
            passed = False
            why += ("; behavioural checks failed: " + ", ".join(
                f"{k} {v:.0%}" for k, v in ev.behaviour["pass_rates"].items())
                + f" < {ev.behaviour['min_pass_rate']:.0%}")
        run.log({"passed": int(passed), f"challenger_{cfg.metric}": new})
        if not passed:
            raise JobFailed(f"{cfg.model_name} not promoted: {why}")
        registry.set_alias(cfg.model_name, "champion", ev.version.version, reason=why)
        print(f"{cfg.model_name}: v{ev.version.version} promoted to champion ({why})")
        return ev.version.version


if __name__ == "__main__":
    run_job(PromoteConfig, main, __doc__)

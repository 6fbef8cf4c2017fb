"""Search training settings with Ray Tune and register the best trial's model as `challenger`.

The task and data are prepared once; each trial trains a Ray Train `TorchTrainer` with settings
drawn from `tune.search_space` (any field of `model`) by Optuna, and ASHA stops trials that fall
behind after `grace_period` epochs. Trials run `max_concurrent` at a time; each is a W&B run
in the group named after this tuning run. Trial checkpoints live under `<root>/checkpoints/`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import ray
from pydantic import Field, model_validator
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from jobs.train import TrainConfig, final_metrics, prepare
from slipway.cli import JobFailed, run_job
from slipway.config import StrictModel
from slipway.registry import ModelVersion, Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run, worker_wandb
from slipway.train.trainer import (
    ModelSettings,
    Prepared,
    TrainerSettings,
    classifier_loop_config,
    make_trainer,
    register,
    save_splits,
)


class SearchParam(StrictModel):
    """One dimension: `uniform`/`loguniform` over [low, high], `randint` in [low, high), or
    `choice` among `values` (any YAML values, e.g. layer sizes)."""

    type: Literal["uniform", "loguniform", "randint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        if self.type == "choice" and not self.values:
            raise ValueError("choice needs a non-empty `values` list")
        if self.type != "choice" and (self.low is None or self.high is None
                                      or self.low >= self.high):
            raise ValueError(f"{self.type} needs `low` < `high`")
        return self

    def domain(self) -> Any:
        """The Tune domain (a choice samples an index, decoded by `value`)."""
        if self.type == "choice":
            return tune.choice(list(range(len(self.values))))
        if self.type == "randint":
            return tune.randint(int(self.low), int(self.high))
        return getattr(tune, self.type)(self.low, self.high)

    def value(self, sampled: Any) -> Any:
        """The setting for a sampled point."""
        return self.values[sampled] if self.type == "choice" else sampled


class TuneSettings(StrictModel):
    """Search space, budget and early stopping."""

    metric: str = "valid_roc_auc"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(default=4, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    grace_period: int = Field(default=1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: int = Field(default=2, ge=2)
    search_space: dict[str, SearchParam] = Field(default_factory=lambda: {
        "lr": SearchParam(type="loguniform", low=1e-4, high=1e-2)})

    @model_validator(mode="after")
    def _known_fields(self) -> TuneSettings:
        unknown = set(self.search_space) - set(ModelSettings.model_fields)
        if unknown:
            raise ValueError(f"search_space keys {sorted(unknown)} are not model settings; "
                             f"use some of {sorted(ModelSettings.model_fields)}")
        return self


class TuneJobConfig(TrainConfig):
    """A training config (task, data, trainer, base model settings) plus the search."""

    trainer: TrainerSettings = TrainerSettings(num_workers=1, cpus_per_worker=0.95)
    tune: TuneSettings = TuneSettings()


@dataclass
class TuneResult:
    """The registered best model and every trial's last metrics and settings."""

    version: ModelVersion
    trials: pd.DataFrame
    best_params: dict[str, Any]


def _trial(params: dict[str, Any], base_model: dict[str, Any], choices: dict[str, list],
           trainer: TrainerSettings, seed: int, wandb: dict | None, prepared: Prepared,
           tune_run: str, storage_path: str) -> None:
    """One Tune trial: a TorchTrainer with the sampled settings, reporting each epoch to Tune.

    Takes plain data: this function is shipped to trial actors, the job's config classes not.
    """
    settings = {k: choices[k][v] if k in choices else v for k, v in params.items()}
    model = ModelSettings(**{**base_model, **settings})
    run_name = f"{tune_run}-{tune.get_context().get_trial_id()}"
    run_wandb = wandb and {**wandb, "id": run_name, "name": run_name,
                           "config": {**wandb["config"], "model": model.model_dump()}}
    config = classifier_loop_config(prepared, model, seed, wandb=run_wandb)
    make_trainer(prepared.datasets, config, trainer, run_name, storage_path,
                 callbacks=[TuneReportCallback()]).fit()


def main(cfg: TuneJobConfig) -> TuneResult:
    """Prepare once, search, register the best trial as `challenger`."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    registry = Registry(storage)
    search = cfg.tune
    with track_run("tune", cfg, storage, wandb_run=False) as run:
        prepared = prepare(cfg, storage)
        for name, version in prepared.data_versions.items():
            run.add_data_version(name, version)
        split_uri = save_splits(prepared.splits, storage, cfg.model_name, run.run_id)
        tune_run = f"{cfg.model_name}-tune-{uuid.uuid4().hex[:6]}"
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial, base_model=cfg.model.model_dump(),
                choices={k: p.values for k, p in search.search_space.items()
                         if p.type == "choice"},
                trainer=cfg.trainer, seed=cfg.seed,
                wandb=worker_wandb(cfg, storage, "tune", tune_run, group=tune_run),
                prepared=prepared, tune_run=tune_run,
                storage_path=storage.makedirs("checkpoints")),
            {"cpu": 0.01})
        tuner = tune.Tuner(
            trainable,
            param_space={k: p.domain() for k, p in search.search_space.items()},
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(
                    OptunaSearch(metric=search.metric, mode=search.mode, seed=cfg.seed),
                    max_concurrent=search.max_concurrent),
                scheduler=ASHAScheduler(metric=search.metric, mode=search.mode,
                                        time_attr="training_iteration", max_t=cfg.model.epochs,
                                        grace_period=search.grace_period,
                                        reduction_factor=search.reduction_factor),
                num_samples=search.num_samples),
            run_config=tune.RunConfig(name=tune_run, storage_path=storage.makedirs("tune")),
        )
        results = tuner.fit()
        finished = [r for r in results if r.metrics and CHECKPOINT_PATH_KEY in r.metrics]
        if not finished:
            errors = [str(r.error) for r in results if r.error]
            raise JobFailed(f"no tuning trial finished an epoch; errors: {errors[:3]}")
        best = results.get_best_result(metric=search.metric, mode=search.mode, scope="last")
        best_params = {k: search.search_space[k].value(v) for k, v in best.config.items()}
        model = ModelSettings(**{**cfg.model.model_dump(), **best_params})
        final = final_metrics(best.metrics)
        version = register(
            registry, cfg.model_name, prepared, classifier_loop_config(prepared, model, cfg.seed),
            Checkpoint(best.metrics[CHECKPOINT_PATH_KEY]), final,
            config={**cfg.model_dump(mode="json"), "model": model.model_dump()},
            code_version=run.git_sha, parent_run=run.run_id, tune_run=tune_run,
            trial_params=best_params, splits_uri=split_uri)
        registry.set_alias(cfg.model_name, "challenger", version.version, reason=run.run_id)
        trials = results.get_dataframe()
        run.log({**final, "model_version": version.version, "trials": len(trials)})
    print(f"{cfg.model_name}: {len(trials)} trials ({len(finished)} reported); best "
          f"{search.metric} {final[search.metric]:.4f} with {best_params}; registered "
          f"v{version.version} (challenger)")
    return TuneResult(version=version, trials=trials, best_params=best_params)


if __name__ == "__main__":
    run_job(TuneJobConfig, main, __doc__)
    ray.shutdown()

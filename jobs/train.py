"""Train a model with Ray Train and register it as `challenger`.

`task: engagement` trains the click model on point-in-time features from Feast, split by time;
`task: text` trains the text classifier on labelled text (article topics or your own CSV). Both
run a TorchTrainer with workers, CPU/GPU and fault tolerance from config, checkpoint every epoch
under `<root>/checkpoints/<run>/`, log live from rank 0 to W&B, and keep the held-out test split
for `jobs.evaluate`. `text.model: lexical` fits TF-IDF + logistic regression on the same split in
one Ray task instead (seconds; registered with runtime `lexical`, served like any version), and
`text.model: combined` fits it on TF-IDF and the frozen encoder's sentence embeddings.
`text.candidates` trains several of these on the same split, registers each, and makes the best
on validation macro-F1 the challenger, with the comparison in its `candidates.json`.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import ray
from pydantic import Field

from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.registry import ModelVersion, Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run, worker_wandb
from slipway.train.engagement import EngagementData
from slipway.train.engagement import prepare as prepare_engagement
from slipway.train.text import TextData, split_text, train_lexical
from slipway.train.text import prepare as prepare_text
from slipway.train.trainer import (
    ModelSettings,
    Prepared,
    TrainerSettings,
    classifier_loop_config,
    fit,
    make_trainer,
    register,
    save_splits,
)


class TrainConfig(JobConfig):
    """A training job: the task, its data, the trainer and the model."""

    task: Literal["engagement", "text"] = "engagement"
    model_name: str = Field(default="engagement", pattern=r"^[A-Za-z0-9_-]+$")
    seed: int = 0
    valid_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    engagement: EngagementData = EngagementData()
    text: TextData = TextData()
    trainer: TrainerSettings = TrainerSettings()
    model: ModelSettings = ModelSettings()
    resume_run: str | None = Field(default=None, description="Ray Train run name to resume")
    fail_at_epoch: int | None = Field(default=None, description="drill: fail once at this epoch")


@dataclass
class TrainResult:
    """The registered version and the per-epoch history (of the kept checkpoints)."""

    version: ModelVersion
    history: pd.DataFrame
    run_name: str


def prepare(cfg: TrainConfig, storage: Storage) -> Prepared:
    """Data, splits and model of the configured task."""
    if cfg.task == "engagement":
        return prepare_engagement(cfg.engagement, storage, cfg.seed, cfg.valid_fraction,
                                  cfg.test_fraction)
    return prepare_text(cfg.text, storage, cfg.seed, cfg.valid_fraction, cfg.test_fraction)


def final_metrics(metrics: dict) -> dict[str, float]:
    """The validation metrics of the last reported epoch."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("valid_")}


# What each text candidate sets in `text`.
CANDIDATES = {"lexical": {"model": "lexical", "train_encoder": False},
              "frozen_encoder": {"model": "encoder", "train_encoder": False},
              "tuned_encoder": {"model": "encoder", "train_encoder": True},
              "combined": {"model": "combined", "train_encoder": False}}


def main(cfg: TrainConfig, alias: str | None = "challenger") -> TrainResult:
    """Prepare the task, train with Ray Train, register the model as `alias`."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    registry = Registry(storage)
    if cfg.task == "text" and cfg.text.candidates:
        return train_candidates(cfg, registry, alias)
    if cfg.task == "text" and cfg.text.model in ("lexical", "combined"):
        return train_lexical_job(cfg, storage, registry, alias)
    with track_run("train", cfg, storage, wandb_run=False) as run:
        prepared = prepare(cfg, storage)
        for name, version in prepared.data_versions.items():
            run.add_data_version(name, version)
        split_uri = save_splits(prepared.splits, storage, cfg.model_name, run.run_id)
        run_name = cfg.resume_run or f"{cfg.model_name}-{uuid.uuid4().hex[:8]}"
        config = classifier_loop_config(
            prepared, cfg.model, cfg.seed, fail_at_epoch=cfg.fail_at_epoch,
            fail_marker=os.path.join(storage.root, "checkpoints", f"{run_name}.failed")
            if storage.is_local else None,
            wandb=worker_wandb(cfg, storage, "train", run.run_id,
                               data_versions=prepared.data_versions, ray_train_run=run_name))
        trainer = make_trainer(prepared.datasets, config, cfg.trainer, run_name,
                               storage.makedirs("checkpoints"))
        result = fit(trainer, run_name)
        final = final_metrics(result.metrics)
        version = register(registry, cfg.model_name, prepared, config, result.checkpoint, final,
                           epochs_run=result.return_value["epochs_run"],
                           config=cfg.model_dump(mode="json"), code_version=run.git_sha,
                           parent_run=run.run_id, train_run=run_name, splits_uri=split_uri)
        if alias:
            registry.set_alias(cfg.model_name, alias, version.version, reason=run.run_id)
        run.log({**final, "model_version": version.version})
    sizes = " / ".join(f"{len(v):,} {k}" for k, v in prepared.splits.items())
    print(f"{cfg.model_name} v{version.version}{f' ({alias})' if alias else ''}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in final.items())
          + f"; {sizes} examples; checkpoint {result.checkpoint.path}")
    return TrainResult(version=version, history=result.metrics_dataframe, run_name=run_name)


def train_candidates(cfg: TrainConfig, registry: Registry, alias: str | None) -> TrainResult:
    """Each of `text.candidates` trained on the same split and registered; the best on
    validation macro-F1 becomes `alias`, with every candidate's version and validation
    metrics in its `candidates.json` (which `jobs.evaluate` reports)."""
    results = {}
    for name in cfg.text.candidates:
        text = cfg.text.model_copy(update={**CANDIDATES[name], "candidates": None})
        results[name] = main(cfg.model_copy(update={"text": text}), alias=None)
    scores = {name: r.version.metrics["valid_macro_f1"] for name, r in results.items()}
    best = max(scores, key=scores.__getitem__)
    version = results[best].version
    comparison = {"best": best, "metric": "valid_macro_f1",
                  "candidates": {name: {"version": r.version.version, **r.version.metrics}
                                 for name, r in results.items()}}
    registry.write_file(cfg.model_name, version.version,
                        json.dumps(comparison, indent=2).encode(), "candidates.json")
    if alias:
        registry.set_alias(cfg.model_name, alias, version.version,
                           reason=f"best of {len(scores)} candidates on valid_macro_f1")
    print(f"{cfg.model_name}: " + ", ".join(f"{n} v{results[n].version.version} "
                                            f"{s:.3f}" for n, s in scores.items())
          + f" (valid macro-F1); v{version.version} ({best}) is the {alias or 'best'}")
    return results[best]


def train_lexical_job(cfg: TrainConfig, storage: Storage, registry: Registry,
                      alias: str | None) -> TrainResult:
    """The lexical (or combined) text model: split, fit, register as `alias` (no Ray Train
    run)."""
    with track_run("train", cfg, storage) as run:
        text = split_text(cfg.text, storage, cfg.seed, cfg.valid_fraction, cfg.test_fraction)
        for name, version in text.data_versions.items():
            run.add_data_version(name, version)
        split_uri = save_splits(text.splits, storage, cfg.model_name, run.run_id)
        model, final = train_lexical(text)
        with tempfile.TemporaryDirectory() as folder:
            model.save(folder)
            version = registry.register_folder(
                cfg.model_name, folder, kind="text_classifier", runtime="lexical", task="text",
                labels=text.names, metrics=final, data_versions=text.data_versions,
                examples={k: len(v) for k, v in text.splits.items()}, splits_uri=split_uri,
                text=text.data.model_dump(include={"text_columns", "label_column"}),
                config=cfg.model_dump(mode="json"), code_version=run.git_sha,
                parent_run=run.run_id)
        if alias:
            registry.set_alias(cfg.model_name, alias, version.version, reason=run.run_id)
        run.log({**final, "model_version": version.version})
    sizes = " / ".join(f"{len(v):,} {k}" for k, v in text.splits.items())
    print(f"{cfg.model_name} v{version.version} ({alias + ', ' if alias else ''}"
          f"{cfg.text.model}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in final.items()) + f"; {sizes} examples")
    return TrainResult(version=version, history=pd.DataFrame([final]), run_name=run.run_id)


if __name__ == "__main__":
    run_job(TrainConfig, main, __doc__)
    ray.shutdown()

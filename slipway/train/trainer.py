"""What training and tuning share: settings, the prepared task, the TorchTrainer, registration.

A task (engagement or text) prepares `Prepared`: Ray Datasets of model inputs, the model class
and its parameters, and the splits to keep. `make_trainer` turns it into a Ray Train
`TorchTrainer` with scaling, checkpoints and fault tolerance from config; `register` stores the
final weights in the registry with their lineage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch
from pydantic import Field
from ray.data.extensions import ArrowTensorArray
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from slipway.config import StrictModel
from slipway.errors import SlipwayError
from slipway.registry import ModelVersion, Registry
from slipway.storage import Storage
from slipway.train.loop import CHECKPOINT_FILE, train_loop


class TrainerSettings(StrictModel):
    """Ray Train scaling and fault tolerance."""

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=1, ge=0)
    keep_checkpoints: int | None = Field(
        default=None, ge=1, description="checkpoints kept per run; None keeps every epoch's")


class ModelSettings(StrictModel):
    """Architecture and optimisation (the search space of `jobs.tune` overrides these)."""

    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(default=0.1, ge=0, lt=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    epochs: int = Field(default=5, ge=1)


@dataclass
class Prepared:
    """A task ready to train: datasets, model, splits to keep and metadata to register."""

    task: str
    model_cls: type[torch.nn.Module]
    arch_params: dict[str, Any]
    inputs: list[str]
    datasets: dict[str, ray.data.Dataset]
    splits: dict[str, pd.DataFrame]
    metadata: dict[str, Any] = field(default_factory=dict)
    data_versions: dict[str, str] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)  # the task's own train_loop_config keys


def to_dataset(columns: dict[str, np.ndarray]) -> ray.data.Dataset:
    """A Ray Dataset with one column per array: a fixed-shape tensor column for a 2-D (or
    higher) array, a plain column for a 1-D one."""
    return ray.data.from_arrow(pa.table({
        k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else v for k, v in columns.items()}))


def classifier_loop_config(prepared: Prepared, model: ModelSettings, seed: int, **extra: Any
                ) -> dict[str, Any]:
    """The `train_loop_config` for a prepared task and model settings."""
    return {"model_cls": prepared.model_cls,
            "arch_params": {**prepared.arch_params, "hidden": model.hidden,
                            "dropout": model.dropout},
            "inputs": prepared.inputs, "seed": seed,
            **model.model_dump(exclude={"hidden", "dropout"}), **prepared.loop, **extra}


def make_trainer(datasets: dict[str, ray.data.Dataset], config: dict[str, Any],
                 settings: TrainerSettings, run_name: str, storage_path: str,
                 callbacks: list | None = None, loop: Callable[[dict], None] = train_loop
                 ) -> TorchTrainer:
    """A TorchTrainer running `loop` (the classifier loop by default) on `datasets`, each
    worker's torch on as many `threads` as it has CPUs; the same `run_name` under
    `storage_path` resumes a run. `train` is sharded across the workers; every worker reads
    the other datasets whole (the loops score the validation split without dropping rows to
    even out shards, and with no coordinator actor per dataset), and a lone worker reads
    `train` whole too (a split into one shard would start a coordinator actor for nothing)."""
    split = ["train"] if settings.num_workers > 1 else []
    return TorchTrainer(
        loop,
        train_loop_config={**config, "threads": max(1, int(settings.cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=split),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints)),
    )


def fit(trainer: TorchTrainer, run_name: str) -> Result:
    """Run `trainer`; a run that fails for good (its worker group failed more often than
    `trainer.max_failures` allows) is a `SlipwayError` that says how to resume it."""
    try:
        result = trainer.fit()
        error = result.error or (None if result.checkpoint else "it reported no checkpoint")
    except ray.train.TrainingFailedError as exc:
        error = exc
    if error:
        last = str(error).strip().splitlines()[-1]
        raise SlipwayError(f"training run {run_name} failed: {last}; fix the cause, then "
                           f"resume it from its last checkpoint with --set resume_run={run_name}")
    return result


def save_splits(splits: dict[str, pd.DataFrame], storage: Storage, model_name: str, run_id: str
                ) -> str:
    """Write train/valid/test frames under `splits/<model>/<run>/`; return the folder URI."""
    storage.makedirs("splits", model_name, run_id)
    uri = storage.uri("splits", model_name, run_id)
    for name, part in splits.items():
        part.to_parquet(f"{uri}/{name}.parquet", index=False)
    return uri


def register(registry: Registry, name: str, prepared: Prepared, loop_cfg: dict[str, Any],
             checkpoint: Checkpoint, metrics: dict[str, float], **lineage: Any) -> ModelVersion:
    """Register the checkpoint's weights as the next version of `name`, with its lineage."""
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True)
    return registry.register(
        name, state["model"], prepared.model_cls.__name__, loop_cfg["arch_params"],
        task=prepared.task, metrics=metrics, data_versions=prepared.data_versions,
        checkpoint_uri=checkpoint.path,
        examples={k: len(v) for k, v in prepared.splits.items()},
        **prepared.metadata, **lineage)

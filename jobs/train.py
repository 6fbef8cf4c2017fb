"""Train the engagement (click) model with Ray Train on point-in-time features from Feast.

Labels are impressions from the curated events; features come from the `engagement` feature
service as of each impression's time. The examples are split by time (train, then validation,
then a held-out test split that only `jobs.evaluate` reads). The trained model is registered
with its lineage and marked `challenger`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch
from pydantic import Field
from ray.data.extensions import ArrowTensorArray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, StrictModel
from slipway.features.definitions import VIEW_FIELDS
from slipway.features.store import FeatureStoreSettings, open_store, training_set
from slipway.models.engagement import EngagementMLP, Preprocessor
from slipway.registry import ModelVersion, Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run
from slipway.train.loop import CHECKPOINT_FILE, train_loop

_ARCH = EngagementMLP.__name__


class TrainerSettings(StrictModel):
    """Ray Train scaling and fault tolerance."""

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=1, ge=0)
    keep_checkpoints: int | None = Field(
        default=None, ge=1, description="checkpoints kept per run; None keeps every epoch's")


class ModelSettings(StrictModel):
    """Architecture and optimisation."""

    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    epochs: int = Field(default=5, ge=1)


class TrainConfig(JobConfig):
    """Engagement model training job."""

    model_name: str = Field(default="engagement", pattern=r"^[A-Za-z0-9_-]+$")
    seed: int = 0
    max_examples: int | None = Field(default=50_000, ge=100)
    valid_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
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


def load_examples(cfg: TrainConfig, storage: Storage) -> pd.DataFrame:
    """Impressions with their point-in-time features, oldest first."""
    uri = storage.uri("curated", "events")
    if not storage.list_files("curated", "events"):
        raise JobFailed(f"no curated events under {uri}; run jobs.ingest and jobs.features")
    labels = pd.read_parquet(uri, columns=["user_id", "article_id", "event_timestamp",
                                           "clicked"])
    if cfg.max_examples and len(labels) > cfg.max_examples:
        labels = labels.sample(cfg.max_examples, random_state=cfg.seed)
    labels = labels.rename(columns={"clicked": "label"})
    labels["label"] = labels["label"].astype("int64")
    store = open_store(cfg.feature_store, storage)
    examples = training_set(store, labels)
    return examples.sort_values(["event_timestamp", "user_id", "article_id"]).reset_index(
        drop=True)


def split_by_time(df: pd.DataFrame, valid: float, test: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Oldest rows train, then validation, newest are the held-out test split."""
    n = len(df)
    a, b = int(n * (1 - valid - test)), int(n * (1 - test))
    return df.iloc[:a], df.iloc[a:b], df.iloc[b:]


def to_dataset(x: np.ndarray, y: np.ndarray) -> ray.data.Dataset:
    """A Ray Dataset with a tensor column `x` and a label column `y`."""
    return ray.data.from_arrow(pa.table({"x": ArrowTensorArray.from_numpy(x), "y": y}))


def main(cfg: TrainConfig) -> TrainResult:
    """Build examples, train with Ray Train, register the model as `challenger`."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    registry = Registry(storage)
    with track_run("train", cfg, storage) as run:
        for view in VIEW_FIELDS:
            run.add_data_version(f"features/{view}", storage.version("features", view))
        examples = load_examples(cfg, storage)
        train, valid, test = split_by_time(examples, cfg.valid_fraction, cfg.test_fraction)
        if train["label"].nunique() < 2 or valid["label"].nunique() < 2:
            raise JobFailed("training or validation split has a single class; "
                            "use more data (max_examples) or another time range")
        split_uri = storage.uri("splits", cfg.model_name, run.run_id)
        storage.makedirs("splits", cfg.model_name, run.run_id)
        for name, part in (("train", train), ("valid", valid), ("test", test)):
            part.to_parquet(f"{split_uri}/{name}.parquet", index=False)
        prep = Preprocessor.fit(train)
        arch_params = {"in_features": prep.width, "hidden": cfg.model.hidden,
                       "dropout": cfg.model.dropout}
        run_name = cfg.resume_run or f"{cfg.model_name}-{uuid.uuid4().hex[:8]}"
        loop_config = {
            "model_cls": EngagementMLP, "arch_params": arch_params, "seed": cfg.seed,
            **cfg.model.model_dump(exclude={"hidden", "dropout"}),
            "fail_at_epoch": cfg.fail_at_epoch,
            "fail_marker": os.path.join(storage.root, "checkpoints", f"{run_name}.failed")
            if storage.is_local else None,
        }
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=cfg.trainer.num_workers, use_gpu=cfg.trainer.use_gpu,
                resources_per_worker={"CPU": cfg.trainer.cpus_per_worker}),
            datasets={"train": to_dataset(prep.transform(train), train["label"].to_numpy()),
                      "valid": to_dataset(prep.transform(valid), valid["label"].to_numpy())},
            run_config=RunConfig(
                name=run_name, storage_path=storage.makedirs("checkpoints"),
                failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.trainer.keep_checkpoints)),
        )
        result = trainer.fit()
        if result.error or result.checkpoint is None:
            raise JobFailed(f"training run {run_name} failed: {result.error}")
        history = result.metrics_dataframe
        for _, row in history.iterrows():
            run.log({k: float(row[k]) for k in ("train_loss", "valid_loss", "valid_auc")},
                    step=int(row["epoch"]))
        with result.checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True)
        final = {k: float(result.metrics[k]) for k in ("valid_loss", "valid_auc")}
        version = registry.register(
            cfg.model_name, state["model"], _ARCH, arch_params,
            preprocessing=prep.to_dict(), metrics=final, config=cfg.model_dump(mode="json"),
            data_versions=run.data_versions, code_version=run.git_sha, parent_run=run.run_id,
            train_run=run_name, checkpoint_uri=result.checkpoint.path, splits_uri=split_uri,
            examples={"train": len(train), "valid": len(valid), "test": len(test)})
        registry.set_alias(cfg.model_name, "challenger", version.version, reason=run.run_id)
        run.log({**final, "model_version": version.version})
    print(f"{cfg.model_name} v{version.version} (challenger): valid AUC {final['valid_auc']:.3f}, "
          f"loss {final['valid_loss']:.4f}; {len(train):,} train / {len(valid):,} valid / "
          f"{len(test):,} held-out examples; checkpoint {result.checkpoint.path}")
    return TrainResult(version=version, history=history, run_name=run_name)


if __name__ == "__main__":
    run_job(TrainConfig, main, __doc__)
    ray.shutdown()

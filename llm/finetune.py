"""What LM fine-tuning and pre-training share: settings, the DeepSpeed config, the trainer, and
registering what a run exported.

`run_lm_training` is the one driver both `jobs.finetune_llm` (LoRA on instruction examples) and
`jobs.bootstrap_llm` (full pre-training of the default base) use: token arrays in, a Ray Train
`TorchTrainer` running `llm.train_loop.lm_train_loop` with DeepSpeed, the exported folder out.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator
from ray.train import Result

from llm.train_loop import EXPORT_DIR, lm_train_loop
from slipway.config import ConfigError, StrictModel
from slipway.errors import SlipwayError
from slipway.storage import Storage, local_cache
from slipway.train.trainer import TrainerSettings, fit, make_trainer, to_dataset


class LoraSettings(StrictModel):
    """PEFT LoRA: rank, scaling, dropout and the modules adapted."""

    r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"], min_length=1)


class OptimSettings(StrictModel):
    """Batching, schedule and precision; the ZeRO stage and offload live in the DeepSpeed JSON."""

    deepspeed: str = Field(default="configs/deepspeed/zero2.json",
                           description="DeepSpeed JSON config (ZeRO stage, offload)")
    micro_batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    gradient_clipping: float = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool = Field(default=False, description="bf16 mixed precision (on GPU)")
    log_every: int = Field(default=10, ge=1, description="W&B train-loss logging, in steps")

    @field_validator("deepspeed")
    @classmethod
    def _readable(cls, path: str) -> str:
        load_deepspeed_json(path)
        return path


def load_deepspeed_json(path: str) -> dict[str, Any]:
    """A DeepSpeed JSON config, checked for a ZeRO stage we support."""
    try:
        with open(path) as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"optim.deepspeed: {path} does not exist; use one of "
                          "configs/deepspeed/zero2.json, zero3.json, zero3_offload.json") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"optim.deepspeed: {path} is not valid JSON: {exc}") from None
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"optim.deepspeed: {path} has zero_optimization.stage {stage!r}; "
                          "use 0, 1, 2 or 3")
    return ds


@dataclass
class LmRun:
    """A finished LM training run: its Ray Train result and the exported folder."""

    result: Result
    run_name: str
    export_path: str
    metrics: dict[str, float]


def lm_loop_config(base: str, storage: Storage, optim: OptimSettings, trainer: TrainerSettings,
                lora: LoraSettings | None, train_rows: int, seed: int, **extra: Any
                ) -> dict[str, Any]:
    """The `train_loop_config` of `lm_train_loop`."""
    per_worker = train_rows // trainer.num_workers
    steps = int(np.ceil(per_worker / optim.micro_batch_size)) // optim.grad_accum
    return {"base": base, "storage_root": storage.root, "seed": seed,
            "lora": lora.model_dump() if lora else None, "use_gpu": trainer.use_gpu,
            "deepspeed": load_deepspeed_json(optim.deepspeed), "steps_per_epoch": max(steps, 1),
            **optim.model_dump(exclude={"deepspeed"}), **extra}


def run_lm_training(arrays: dict[str, dict[str, np.ndarray]], config: dict[str, Any],
                    trainer: TrainerSettings, storage: Storage, run_name: str | None,
                    name: str) -> LmRun:
    """Train on `arrays` ({"train": ..., "valid": ...} token arrays) with Ray Train; the same
    `run_name` resumes an interrupted run."""
    for split in ("train", "valid"):
        if len(arrays[split]["input_ids"]) < trainer.num_workers:
            raise SlipwayError(f"{split}: {len(arrays[split]['input_ids'])} examples for "
                            f"{trainer.num_workers} workers; add data or lower "
                            "trainer.num_workers")
    run_name = run_name or f"{name}-{uuid.uuid4().hex[:8]}"
    result = fit(make_trainer({k: to_dataset(v) for k, v in arrays.items()}, config, trainer,
                              run_name, storage.makedirs("checkpoints"), loop=lm_train_loop),
                 run_name)
    export_path = os.path.join(result.checkpoint.path, EXPORT_DIR)
    if not result.checkpoint.filesystem.get_file_info(export_path).type:
        raise SlipwayError(f"run {run_name}: its last checkpoint has no {EXPORT_DIR}/ folder")
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return LmRun(result=result, run_name=run_name, export_path=export_path, metrics=metrics)


def local_export(run: LmRun) -> str:
    """A local folder with the run's export: the checkpoint's own folder when it is local, else
    a copy under `~/.cache/slipway/exports/<run>`."""
    if "://" not in run.export_path:
        return run.export_path
    return Storage(run.export_path).download(local_cache("exports", run.run_name))

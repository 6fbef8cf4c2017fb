"""The Ray Train loop for causal language models: DeepSpeed ZeRO, LoRA or full weights.

Runs on every worker of a `TorchTrainer`. DeepSpeed uses the process group Ray Train set up (gloo
on CPU, NCCL on GPU); the ZeRO stage, offload and optimizer come from the DeepSpeed JSON config.
Under ZeRO-3 the model is loaded straight into partitions (`HfDeepSpeedConfig`), so no worker
holds the whole model. Every epoch reports the validation loss and a checkpoint in which every
rank saves its DeepSpeed shards (frozen base weights excluded); a replaced worker group, or a
resumed run, loads it and continues with the next epoch. The last checkpoint also holds the
export: the LoRA adapter (or the full model) as a Hugging Face folder under `export/`.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from typing import Any

import psutil
import ray.train
import torch

from llm.base import load_causal_lm, resolve
from llm.deepspeed_ops import use_packaged_ninja
from llm.tokens import IGNORE
from slipway.models.hf import load_tokenizer
from slipway.storage import Storage
from slipway.train.loop import log_checkpoint, maybe_fail, rank_zero_run

DS_TAG = "deepspeed"
EXPORT_DIR = "export"


def deepspeed_config(base: dict[str, Any], config: dict[str, Any], world_size: int
                     ) -> dict[str, Any]:
    """The DeepSpeed JSON config with batch sizes, optimizer, schedule and precision filled in
    from the job's settings (one source for each number)."""
    ds = dict(base)
    micro, accum = config["micro_batch_size"], config["grad_accum"]
    zero = ds.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") != "none"
    params = {"lr": config["lr"], "weight_decay": config["weight_decay"]}
    if not config["use_gpu"] and not offload:
        params["torch_adam"] = True  # DeepSpeed's fused Adam is a GPU kernel; CPU uses torch's
    total = max(1, config["steps_per_epoch"] * config["epochs"])
    ds.update({
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": config["gradient_clipping"],
        "optimizer": {"type": "AdamW", "params": params},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": config["lr"], "total_num_steps": total,
            "warmup_num_steps": max(1, int(total * config["warmup_fraction"]))}},
        "bf16": {"enabled": config["bf16"]},
        "steps_per_print": 10**9,
    })
    return ds


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut right padding down to the batch's longest row."""
    length = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :length] for k, v in batch.items()}


def _valid_loss(engine: Any, valid: Any, batch_size: int) -> float:
    """Token-weighted loss over the whole validation split. Every rank runs every batch (under
    ZeRO-3 each forward gathers parameters, which all ranks must join), so every rank has the
    same loss."""
    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in valid.iter_torch_batches(batch_size=batch_size, device=engine.device):
            batch = _trim(batch)
            tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += engine(**batch).loss.item() * tokens
            count += tokens
    engine.train()
    return total / max(count, 1)


def memory_mb() -> dict[str, float]:
    """This worker's resident memory now and at its peak, in MB."""
    return {"rss_mb": psutil.Process().memory_info().rss / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def export(engine: Any, folder: str, lora: bool, zero_stage: int, base_path: str) -> None:
    """Save the adapter (LoRA) or the whole model (with its tokenizer) as an HF folder; under
    ZeRO-3 the partitions are gathered first, which every rank must join."""
    import deepspeed

    params = [p for p in engine.module.parameters() if p.requires_grad or not lora]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero_stage == 3):
        if ray.train.get_context().get_world_rank() == 0:
            engine.module.save_pretrained(folder)
            if not lora:
                load_tokenizer(base_path).save_pretrained(folder)


def lm_train_loop(config: dict[str, Any]) -> None:
    """Per-worker fine-tuning (LoRA) or pre-training (full weights) of a causal LM."""
    import deepspeed
    from transformers import set_seed
    from transformers.integrations import HfDeepSpeedConfig

    torch.set_num_threads(config["threads"])  # the worker's CPUs
    # Seeds only: forcing deterministic kernels would fail attention backward on some GPUs.
    set_seed(config["seed"])
    context = ray.train.get_context()
    world = context.get_world_size()
    base_path, _ = resolve(config["base"], Storage(config["storage_root"]))
    ds_config = deepspeed_config(config["deepspeed"], config, world)
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    use_packaged_ninja()  # the ninja `make setup` built the ops with: no rebuild here
    deepspeed.init_distributed()  # joins the process group Ray Train set up
    before_model_mb = memory_mb()["rss_mb"]
    # Kept alive while loading: from_pretrained then builds the model in ZeRO-3 partitions.
    partitioned_load = HfDeepSpeedConfig(ds_config) if stage == 3 else None
    model = load_causal_lm(base_path).train()
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config["lora"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    del partitioned_load

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, client = engine.load_checkpoint(folder, tag=DS_TAG, load_module_strict=False)
        start_epoch = client["epoch"] + 1

    run = rank_zero_run(config)
    train_shard = ray.train.get_dataset_shard("train")
    valid = ray.train.get_dataset_shard("valid")  # the whole split (make_trainer)
    counts = {"trainable_params": sum(_numel(p) for p in trainable),
              "total_params": sum(_numel(p) for p in engine.module.parameters())}
    for epoch in range(start_epoch, config["epochs"]):
        maybe_fail(config, epoch)
        tokens, losses, started = 0, [], time.perf_counter()
        for batch in train_shard.iter_torch_batches(
                batch_size=config["micro_batch_size"], device=engine.device,
                local_shuffle_buffer_size=1024, local_shuffle_seed=config["seed"] + epoch):
            batch = _trim(batch)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
            if run is not None and engine.is_gradient_accumulation_boundary() \
                    and engine.global_steps % config["log_every"] == 0:
                run.log({"train_loss": sum(losses[-config["log_every"]:])
                         / len(losses[-config["log_every"]:]),
                         "lr": engine.get_lr()[0],
                         "tokens_per_s": tokens * world / (time.perf_counter() - started)},
                        step=engine.global_steps)
        seconds = time.perf_counter() - started
        valid_loss = _valid_loss(engine, valid, config["micro_batch_size"])
        metrics = {"epoch": epoch, "start_epoch": start_epoch,
                   "train_loss": sum(losses) / max(len(losses), 1),
                   # shards are equal (Ray Train splits with equal=True): the global throughput
                   "train_tokens_per_s": tokens * world / max(seconds, 1e-9),
                   "valid_loss": valid_loss, "valid_perplexity": math.exp(min(valid_loss, 50)),
                   "optimizer_steps": engine.global_steps, **counts, **memory_mb(),
                   "rss_before_model_mb": before_model_mb}
        with tempfile.TemporaryDirectory() as folder:
            engine.save_checkpoint(folder, tag=DS_TAG, client_state={"epoch": epoch},
                                   exclude_frozen_parameters=bool(config["lora"]))
            last = epoch == config["epochs"] - 1
            if last:
                export(engine, os.path.join(folder, EXPORT_DIR), bool(config["lora"]), stage,
                       base_path)
            if run is not None:
                run.log({k: v for k, v in metrics.items() if k != "epoch"},
                        step=engine.global_steps)
                if last:
                    log_checkpoint(run, os.path.join(folder, EXPORT_DIR), epoch,
                                   kind="adapter" if config["lora"] else "model")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    if run is not None:
        run.finish()


def _numel(param: torch.nn.Parameter) -> int:
    """Full size of a parameter, also when ZeRO-3 has partitioned it."""
    return int(getattr(param, "ds_numel", param.numel()))

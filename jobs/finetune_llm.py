"""Fine-tune a causal LM with LoRA under DeepSpeed on Ray Train; register the adapter.

Instruction examples come from the articles (topic, title, RAG question answering) and/or your
own prompt/response JSONL (`data.jsonl`). The base is a registry reference, a local folder, an
object-store URI or a hub id (see `llm.base`); it is pinned to a version in the adapter's lineage.
The ZeRO stage and offload come from the DeepSpeed JSON named by `optim.deepspeed`. The adapter
(safetensors) is registered as `challenger`; `jobs.evaluate_llm` compares it with the base.
"""

from __future__ import annotations

import os

import ray
from pydantic import Field

from llm.base import REGISTRY_PREFIX, resolve
from llm.finetune import LoraSettings, OptimSettings, lm_loop_config, local_export, run_lm_training
from llm.instructions import InstructionData, build
from llm.tokens import encode_examples
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.data.tables import locate
from slipway.models.hf import load_tokenizer
from slipway.registry import ModelVersion, Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run, worker_wandb
from slipway.train.trainer import TrainerSettings, save_splits


class FinetuneConfig(JobConfig):
    """Base model, instruction data, LoRA, optimisation and scaling."""

    model_name: str = Field(default="articles_lora", pattern=r"^[A-Za-z0-9_-]+$")
    base: str = Field(default=f"{REGISTRY_PREFIX}base_lm",
                      description="registry:NAME[@REF], a local folder, s3://, gs:// or a hub id")
    seed: int = 0
    data: InstructionData = InstructionData()
    max_length: int = Field(default=384, ge=32, description="tokens per example")
    lora: LoraSettings = LoraSettings()
    optim: OptimSettings = OptimSettings()
    trainer: TrainerSettings = TrainerSettings(keep_checkpoints=1)
    resume_run: str | None = Field(default=None, description="Ray Train run name to resume")
    fail_at_epoch: int | None = Field(default=None, description="drill: fail once at this epoch")


def main(cfg: FinetuneConfig) -> ModelVersion:
    """Build the examples, fine-tune, register the adapter as `challenger`."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    init_ray(cfg.ray)
    with track_run("finetune_llm", cfg, storage, wandb_run=False) as run:
        base_path, base_version = resolve(cfg.base, storage)
        base = f"{REGISTRY_PREFIX}{base_version.name}@{base_version.version}" \
            if base_version else cfg.base
        tokenizer = load_tokenizer(base_path)
        splits = build(cfg.data, storage, cfg.seed)
        arrays = {}
        for split in ("train", "valid"):
            arrays[split], too_long = encode_examples(
                tokenizer, splits[split]["prompt"], splits[split]["response"], cfg.max_length)
            if too_long:
                print(f"{split}: {too_long} of {len(splits[split])} examples are longer than "
                      f"max_length={cfg.max_length} tokens and are left out; raise max_length "
                      "to keep them")
        if not len(arrays["train"]["input_ids"]):
            raise JobFailed(f"no training example fits max_length={cfg.max_length}; raise it")
        where, parts = locate(cfg.data.articles, storage)
        versions = {cfg.data.articles: where.version(*parts)} if cfg.data.tasks else {}
        for name, version in versions.items():
            run.add_data_version(name, version)
        split_uri = save_splits(splits, storage, cfg.model_name, run.run_id)
        config = lm_loop_config(
            base, storage, cfg.optim, cfg.trainer, cfg.lora,
            train_rows=len(arrays["train"]["input_ids"]), seed=cfg.seed,
            fail_at_epoch=cfg.fail_at_epoch,
            fail_marker=os.path.join(storage.root, "checkpoints", f"{run.run_id}.failed")
            if storage.is_local else None,
            wandb=worker_wandb(cfg, storage, "finetune_llm", run.run_id, base=base,
                               data_versions=versions))
        lm = run_lm_training(arrays, config, cfg.trainer, storage, cfg.resume_run,
                             cfg.model_name)
        version = registry.register_folder(
            cfg.model_name, local_export(lm), kind="lora_adapter", base=base,
            metrics=lm.metrics, max_length=cfg.max_length, tasks=cfg.data.tasks,
            examples={k: len(v) for k, v in splits.items()}, splits_uri=split_uri,
            data_versions=versions, config=cfg.model_dump(mode="json"),
            code_version=run.git_sha, parent_run=run.run_id, train_run=lm.run_name,
            checkpoint_uri=lm.result.checkpoint.path)
        registry.set_alias(cfg.model_name, "challenger", version.version, reason=run.run_id)
        run.log({**lm.metrics, "model_version": version.version})
    m = lm.metrics
    print(f"{cfg.model_name} v{version.version} (challenger) on {base}: LoRA r={cfg.lora.r}, "
          f"{m['trainable_params']:,.0f} of {m['total_params']:,.0f} parameters trained "
          f"({m['trainable_params'] / m['total_params']:.2%}); valid perplexity "
          f"{m['valid_perplexity']:.2f}; {m['train_tokens_per_s']:,.0f} tokens/s; "
          f"{len(arrays['train']['input_ids']):,} train examples")
    return version


if __name__ == "__main__":
    run_job(FinetuneConfig, main, __doc__)
    ray.shutdown()

"""Build the offline default base language model and register it as `base_lm` (champion).

Trains a BPE tokenizer on the corpus, initialises a small Llama from `model`, pre-trains it on the
corpus with Ray Train + DeepSpeed (full weights), and registers the Hugging Face folder with its
validation perplexity. With `reuse: true` (the default) an existing champion is kept and nothing
is trained; `--set reuse=false` builds a new version.
"""

from __future__ import annotations

import os
import tempfile

import ray
from pydantic import Field

from llm.bootstrap import (
    Corpus,
    LlamaShape,
    corpus_texts,
    init_model,
    split_documents,
    train_tokenizer,
)
from llm.finetune import OptimSettings, lm_loop_config, local_export, run_lm_training
from llm.tokens import encode_blocks
from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.registry import ModelVersion, Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run, worker_wandb
from slipway.train.trainer import TrainerSettings


class BootstrapConfig(JobConfig):
    """Corpus, model shape and pre-training settings."""

    model_name: str = Field(default="base_lm", pattern=r"^[A-Za-z0-9_-]+$")
    reuse: bool = True
    seed: int = 0
    corpus: Corpus = Corpus()
    model: LlamaShape = LlamaShape()
    block_size: int = Field(default=128, ge=16)
    valid_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    optim: OptimSettings = OptimSettings(lr=3e-3, epochs=3, micro_batch_size=16)
    trainer: TrainerSettings = TrainerSettings(keep_checkpoints=1)


def main(cfg: BootstrapConfig) -> ModelVersion:
    """Reuse the registered base, or build, pre-train and register a new one."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    if cfg.reuse and "champion" in registry.aliases(cfg.model_name):
        version = registry.get(cfg.model_name, "champion")
        print(f"{cfg.model_name} v{version.version} (champion) reused: valid perplexity "
              f"{version.metrics.get('valid_perplexity', float('nan')):.2f}")
        return version
    init_ray(cfg.ray)
    with track_run("bootstrap_llm", cfg, storage, wandb_run=False) as run:
        texts = corpus_texts(cfg.corpus, storage)
        tokenizer = train_tokenizer(texts, cfg.model.vocab_size)
        train_docs, valid_docs = split_documents(texts, cfg.valid_fraction, cfg.seed)
        arrays = {"train": encode_blocks(tokenizer, train_docs, cfg.block_size),
                  "valid": encode_blocks(tokenizer, valid_docs, cfg.block_size)}
        # The initial model goes to the storage root, where every worker can read it.
        with tempfile.TemporaryDirectory() as folder:
            init_model(cfg.model, tokenizer, cfg.seed).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            init = storage.upload(folder, "llm", "init", run.run_id)
        config = lm_loop_config(init, storage, cfg.optim,
                             cfg.trainer, lora=None, train_rows=len(arrays["train"]["input_ids"]),
                             seed=cfg.seed,
                             wandb=worker_wandb(cfg, storage, "bootstrap_llm", run.run_id))
        lm = run_lm_training(arrays, config, cfg.trainer, storage, None, cfg.model_name)
        version = registry.register_folder(
            cfg.model_name, local_export(lm), kind="base_lm", metrics=lm.metrics,
            config=cfg.model_dump(mode="json"), code_version=run.git_sha,
            parent_run=run.run_id, train_run=lm.run_name, checkpoint_uri=lm.result.checkpoint.path,
            corpus={"documents": len(texts),
                    "train_tokens": int(arrays["train"]["input_ids"].size)},
            initialised_from=init)
        registry.set_alias(cfg.model_name, "champion", version.version, reason=run.run_id)
        run.log({**lm.metrics, "model_version": version.version})
    print(f"{cfg.model_name} v{version.version} (champion): {lm.metrics['total_params']:,.0f} "
          f"parameters, {len(tokenizer):,} tokens in the vocabulary, "
          f"{arrays['train']['input_ids'].size:,} training tokens x {cfg.optim.epochs} epochs at "
          f"{lm.metrics['train_tokens_per_s']:,.0f} tokens/s; valid perplexity "
          f"{lm.metrics['valid_perplexity']:.2f}; {os.path.basename(version.uri)}")
    return version


if __name__ == "__main__":
    run_job(BootstrapConfig, main, __doc__)
    ray.shutdown()

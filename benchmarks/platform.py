"""A small storage root holding everything the Serve app loads, built by the platform's own
pipeline (`jobs.pipeline` over `configs/pipeline.yaml`) at small sizes: curated data and Feast
features, engagement and topic champions, a tiny base LM with a LoRA adapter, and the retrieval
index. W&B runs are written offline. Tuning is left out (the experiment notebook tunes)."""

from __future__ import annotations

import yaml

from jobs.pipeline import PipelineConfig
from jobs.pipeline import main as pipeline
from slipway.config import load_config

TINY_LM = ["model.vocab_size=600", "model.hidden_size=64", "model.intermediate_size=128",
           "model.num_hidden_layers=2", "model.num_attention_heads=2",
           "model.num_key_value_heads=2", "corpus.num_articles=200", "optim.epochs=1"]
ONE_WORKER = ["trainer.num_workers=1", "trainer.keep_checkpoints=null"]
SMALL = {
    # Enough impressions for the engagement model's quality to show (tests/model/test_train.py).
    "generate": ["generator.num_events=30000", "generator.num_users=400",
                 "generator.num_articles=200", "generator.days=20"],
    # The shipped training (two workers, five epochs) on every impression: tests/model/test_train.py
    # judges this model and resumes a stopped copy of its run.
    "train": ["trainer.keep_checkpoints=null", "engagement.max_examples=null"],
    # Three epochs at a higher rate and smaller batches than the shipped 20: a calibrated champion
    # (valid ECE about 0.08 instead of 0.65 at the shipped rate), whose served probabilities the
    # labeling round's consensus weighs (tests/labeling).
    "train_text": [*ONE_WORKER, "model.epochs=3", "model.batch_size=16", "model.lr=0.01",
                   "text.embed_actors=1"],
    "bootstrap_llm": ["trainer.num_workers=1", *TINY_LM],
    "finetune_llm": ["trainer.num_workers=2", "optim.epochs=1",
                     "optim.micro_batch_size=8", "data.max_articles=40", "max_length=320"],
    "evaluate_llm": ["max_examples_per_task=8", "max_new_tokens=8", "gate=[perplexity]"],
    # Two FAISS shards built by Ray Data, served by two IndexShard deployments (tests/serve).
    "index": ["index.embed_actors=1", "eval_questions=20", "index.shards=2"],
}


def platform_pipeline(root: str, path: str) -> str:
    """Write the small platform pipeline for `root` to `path` (a layer over the shipped
    pipeline) and return the path."""
    layer = {"storage": {"root": root}, "tracking": {"mode": "offline"},
             "stages": [{"name": "tune", "enabled": False},
                        *({"name": name, "set": overrides} for name, overrides in SMALL.items())]}
    with open(path, "w") as f:
        yaml.safe_dump(layer, f)
    return path


def build_platform(root: str, layer_path: str) -> dict[str, str]:
    """Run the pipeline (every stage but tuning) on `root`; return {stage: outcome}."""
    paths = ["configs/pipeline.yaml", platform_pipeline(root, layer_path)]
    return pipeline(load_config(PipelineConfig, paths))


def ensure_platform(root: str | None) -> str:
    """`root` if given, else `benchmarks/.serve-root`, built on a local Ray the first time."""
    import os

    import ray

    if root is not None:
        return os.path.abspath(root)
    root = os.path.abspath("benchmarks/.serve-root")
    if not os.path.exists(f"{root}/indexes"):
        ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
        build_platform(root, f"{root}.pipeline.yaml")
        ray.shutdown()
    return root

"""A small storage root holding everything the Serve app loads, built by the real jobs:
curated data and Feast features, engagement and topic champions, a tiny base LM with a LoRA
adapter, and the retrieval index."""

from __future__ import annotations

from jobs.bootstrap_llm import BootstrapConfig
from jobs.bootstrap_llm import main as bootstrap_job
from jobs.build_index import BuildIndexConfig
from jobs.build_index import main as build_index
from jobs.features import FeaturesConfig
from jobs.features import main as features_job
from jobs.finetune_llm import FinetuneConfig
from jobs.finetune_llm import main as finetune_job
from jobs.generate import GenerateConfig
from jobs.generate import main as generate_job
from jobs.ingest import IngestConfig
from jobs.ingest import main as ingest_job
from jobs.train import TrainConfig
from jobs.train import main as train_job
from slipway.config import load_config
from slipway.registry import Registry
from slipway.storage import Storage

TINY_LM = ["model.vocab_size=600", "model.hidden_size=64", "model.intermediate_size=128",
           "model.num_hidden_layers=2", "model.num_attention_heads=2",
           "model.num_key_value_heads=2", "corpus.num_articles=200", "optim.epochs=1"]


def build_platform(root: str) -> None:
    """Run the jobs (small sizes, one training worker) and promote each model to champion."""
    common = [f"storage.root={root}", "tracking.mode=disabled"]
    one = ["trainer.num_workers=1"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml", [
        *common, "generator.num_events=4000", "generator.num_users=200",
        "generator.num_articles=120", "generator.days=15"]))
    ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    features_job(load_config(FeaturesConfig, "configs/features.yaml", common))
    registry = Registry(Storage(root))
    for config, extra in (("configs/train_engagement.yaml",
                           ["engagement.max_examples=2000", "model.epochs=1"]),
                          ("configs/train_text.yaml", ["model.epochs=3", "text.embed_actors=1"])):
        result = train_job(load_config(TrainConfig, config,
                                       [*common, *one, "trainer.keep_checkpoints=null", *extra]))
        registry.set_alias(result.version.name, "champion", result.version.version, "test")
    bootstrap_job(load_config(BootstrapConfig, "configs/bootstrap_llm.yaml",
                              [*common, *one, *TINY_LM]))
    adapter = finetune_job(load_config(FinetuneConfig, "configs/finetune_articles.yaml", [
        *common, *one, "optim.epochs=1", "optim.micro_batch_size=8", "data.max_articles=40",
        "max_length=320"]))
    registry.set_alias(adapter.name, "champion", adapter.version, "test")
    build_index(load_config(BuildIndexConfig, "configs/build_index.yaml",
                            [*common, "index.embed_actors=1", "eval_questions=20"]))

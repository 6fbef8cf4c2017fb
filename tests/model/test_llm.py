"""LLM training end to end on the platform root's tiny base (built by its pipeline): the
bootstrapped base, the LoRA adapter trained under DeepSpeed ZeRO-2 by two Ray Train workers, one
run under ZeRO-3 with CPU offload on a user's JSON lines that loses its worker group and resumes,
the merge, and the base-vs-tuned gate that promotes or refuses."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs.bootstrap_llm import BootstrapConfig
from jobs.bootstrap_llm import main as bootstrap_job
from jobs.evaluate_llm import EvaluateLlmConfig
from jobs.evaluate_llm import main as evaluate_job
from jobs.finetune_llm import FinetuneConfig
from jobs.finetune_llm import main as finetune_job
from jobs.merge_adapter import MergeConfig
from jobs.merge_adapter import main as merge_job
from llm.base import load_causal_lm, load_tuned, resolve
from slipway.config import load_config
from slipway.errors import SlipwayError
from slipway.models.hf import load_tokenizer
from slipway.registry import Registry
from slipway.storage import Storage
from tests.wandb_files import history_keys, run_records

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def adapter(platform_root):
    """The platform's LoRA adapter: ZeRO-2, two workers, one epoch, W&B offline."""
    return Registry(Storage(platform_root)).get("articles_lora", 1)


def adapter_tensors(version) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(version.uri, "files", "adapter_model.safetensors"))


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def finetune(root: str, *overrides: str):
    return finetune_job(load_config(FinetuneConfig, None, [
        f"storage.root={root}", "optim.micro_batch_size=8", "max_length=320",
        "tracking.mode=disabled", *overrides]))


def test_bootstrap_registers_a_loadable_base_that_learned_the_corpus(platform_root):
    registry = Registry(Storage(platform_root))
    base = registry.get("base_lm", "champion")
    assert base.metadata["kind"] == "base_lm" and base.metadata["corpus"]["documents"] == 200
    path, _ = resolve("registry:base_lm", Storage(platform_root))
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    text = "The coach said the team would boost the season."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # An untrained model is near-uniform (perplexity ~ vocabulary size); this one learned.
    assert base.metrics["valid_perplexity"] < len(tokenizer) / 2
    assert model.config.architectures == ["LlamaForCausalLM"]
    # Reuse: a second bootstrap keeps the champion instead of training again.
    again = bootstrap_job(load_config(BootstrapConfig, None, [
        f"storage.root={platform_root}", "tracking.mode=disabled"]))
    assert again.version == base.version


def test_lora_under_zero2_with_two_workers_trains_only_the_adapter(platform_root, adapter):
    meta = adapter.metadata
    assert meta["kind"] == "lora_adapter" and meta["base"] == "registry:base_lm@1"
    metrics = meta["metrics"]
    assert 0 < metrics["trainable_params"] < 0.2 * metrics["total_params"]
    assert metrics["train_tokens_per_s"] > 0 and metrics["epoch"] == 0
    # Better than a uniform guess over the vocabulary (a loss of ln V) after one short epoch.
    base = load_causal_lm(resolve("registry:base_lm", Storage(platform_root))[0])
    assert metrics["valid_loss"] < 0.95 * math.log(base.config.vocab_size)
    tensors = adapter_tensors(adapter)
    assert tensors and all("lora_" in k for k in tensors)
    # LoRA B starts at zero: a trained adapter has moved it.
    assert max(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 0
    # Two workers: each optimizer step took a micro-batch from each of them.
    per_worker = meta["examples"]["train"] // 2
    assert metrics["optimizer_steps"] == math.ceil(per_worker / 8)
    # Rank 0 logged the run to W&B: loss curve, learning rate, throughput, the adapter.
    by_kind = run_records(platform_root, meta["parent_run"])
    assert {"train_loss", "lr", "tokens_per_s", "valid_perplexity"} <= history_keys(by_kind)
    assert [a.artifact.name for a in by_kind["artifact"]] == [f"{meta['parent_run']}-adapter"]


def test_zero3_with_cpu_offload_resumes_a_lost_worker_group_on_user_jsonl(platform_root,
                                                                           tmp_path):
    words = ["coach", "team", "vaccine", "market", "film", "robot"]
    rows = [{"prompt": f"Repeat the word: {w}\n### Response:", "response": w}
            for _ in range(20) for w in words]
    jsonl = write_jsonl(tmp_path / "mine.jsonl", rows)
    version = finetune(platform_root, "model_name=zero3_lora", "optim.epochs=2",
                       "fail_at_epoch=1", "data.tasks=[]", f"data.jsonl={jsonl}",
                       "optim.deepspeed=configs/deepspeed/zero3_offload.json",
                       "optim.gradient_checkpointing=true", "optim.grad_accum=2", "optim.lr=5e-3")
    meta, metrics = version.metadata, version.metadata["metrics"]
    # Epoch 0 was checkpointed (every rank's ZeRO-3 shards); the replacement group loaded it
    # and ran only epoch 1.
    assert metrics["start_epoch"] == 1 and metrics["epoch"] == 1
    assert sum(meta["examples"].values()) == len(rows)
    # Two epochs of micro-batches per worker, two accumulated per optimizer step (without
    # accumulation there would be twice as many steps).
    batches = math.ceil(meta["examples"]["train"] // 2 / 8)
    assert 2 * (batches // 2) <= metrics["optimizer_steps"] <= batches
    tensors = adapter_tensors(version)
    base = load_causal_lm(resolve("registry:base_lm", Storage(platform_root))[0])
    q_a = next(v for k, v in tensors.items() if "q_proj.lora_A" in k)
    assert q_a.shape == (8, base.config.hidden_size)  # gathered from the partitions, no shard
    # The optimizer lived on the CPU (DeepSpeed's CPU Adam) and the adapter still learned: below
    # a uniform guess over the vocabulary (a loss of ln V).
    assert metrics["valid_loss"] < 0.95 * math.log(base.config.vocab_size)

    broken = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "x", "answer": "y"}] * 10)
    with pytest.raises(SlipwayError, match=r"data.jsonl: .* has no \['response'\] field"):
        finetune(platform_root, "data.tasks=[]", f"data.jsonl={broken}")


def test_merged_model_gives_the_same_logits_as_base_plus_adapter(platform_root, adapter):
    merged = merge_job(load_config(MergeConfig, None, [
        f"storage.root={platform_root}", "tracking.mode=disabled", "ref=champion"]))
    storage = Storage(platform_root)
    base_path, _ = resolve("registry:base_lm", storage)
    adapter_path, _ = Registry(storage).fetch("articles_lora", adapter.version)
    merged_path, _ = resolve(f"registry:{merged.name}@{merged.version}", storage)
    tokenizer = load_tokenizer(base_path)
    batch = tokenizer(["The coach said the team", "Officials linked the vaccine to"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        tuned = load_tuned(base_path, adapter_path)(**batch).logits
        plain = load_causal_lm(merged_path)(**batch).logits
        base = load_causal_lm(base_path)(**batch).logits
    assert torch.allclose(tuned, plain, atol=1e-4)
    assert (tuned - base).abs().max() > 1e-3  # the adapter does change the model
    assert merged.metadata["adapter"] == f"registry:articles_lora@{adapter.version}"


def noop_adapter(root: str, adapter, tmp_path):
    """The adapter with every LoRA B zeroed, registered as a new version: it equals its base."""
    storage = Storage(root)
    folder, _ = Registry(storage).fetch(adapter.name, adapter.version)
    copy = shutil.copytree(folder, tmp_path / "noop")
    tensors = load_file(copy / "adapter_model.safetensors")
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in tensors.items()},
              copy / "adapter_model.safetensors")
    return Registry(storage).register_folder(adapter.name, str(copy), "lora_adapter",
                                             **adapter.recorded)


def test_the_llm_gate_promotes_a_better_adapter_and_refuses_one_equal_to_its_base(
        platform_root, adapter, tmp_path):
    common = [f"storage.root={platform_root}", "tracking.mode=disabled",
              "max_examples_per_task=8", "max_new_tokens=8", "gate=[perplexity]"]
    registry = Registry(Storage(platform_root))
    champion = registry.aliases("articles_lora")["champion"]
    accepted = evaluate_job(load_config(EvaluateLlmConfig, None, [
        *common, f"ref={adapter.version}"]))
    assert accepted["improved"] and registry.aliases("articles_lora")["champion"] == \
        adapter.version
    noop = noop_adapter(platform_root, adapter, tmp_path)
    with pytest.raises(SlipwayError, match=rf"articles_lora v{noop.version} does not beat its "
                                           r"base on \['perplexity'\]"):
        evaluate_job(load_config(EvaluateLlmConfig, None, [*common, f"ref={noop.version}"]))
    report = json.loads(registry.storage.read_bytes(
        "models", "articles_lora", "versions", f"{noop.version:04d}", "llm_evaluation.json"))
    # Equal to the base: the same perplexity on the same examples, so not better.
    assert report["comparison"]["perplexity"]["delta"] == pytest.approx(0, abs=1e-6)
    assert registry.aliases("articles_lora")["champion"] == adapter.version == champion


def test_evaluation_compares_tuned_with_base_on_held_out_articles(platform_root, adapter):
    report = evaluate_job(load_config(EvaluateLlmConfig, None, [
        f"storage.root={platform_root}", "tracking.mode=disabled", "max_examples_per_task=8",
        "max_new_tokens=8", "require_improvement=false", "promote=false",
        f"ref={adapter.version}"]))
    comparison = report["comparison"]
    assert {"perplexity", "topic_exact_match", "title_rouge_l", "qa_token_f1",
            "qa_faithfulness"} <= set(comparison)
    # The base never saw the instruction format: the tuned model predicts responses far better.
    assert comparison["perplexity"]["better"]
    assert comparison["perplexity"]["tuned"] < comparison["perplexity"]["base"]
    for name, side in comparison.items():
        assert side["delta"] == pytest.approx(side["tuned"] - side["base"]), name
    test = pd.read_parquet(f"{adapter.metadata['splits_uri']}/test.parquet")
    stored = json.loads(Registry(Storage(platform_root)).storage.read_bytes(
        "models", "articles_lora", "versions", f"{adapter.version:04d}", "llm_evaluation.json"))
    assert stored["comparison"] == comparison
    assert stored["examples"] == int(np.minimum(test["task"].value_counts(), 8).sum())

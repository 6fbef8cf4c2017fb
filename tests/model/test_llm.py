"""LLM training end to end on a tiny base: bootstrap, LoRA under DeepSpeed ZeRO-2 and ZeRO-3 with
two Ray Train workers, resume from a checkpoint, merge, and the base-vs-tuned evaluation."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from jobs.bootstrap_llm import BootstrapConfig
from jobs.bootstrap_llm import main as bootstrap_job
from jobs.evaluate_llm import EvaluateLlmConfig
from jobs.evaluate_llm import main as evaluate_job
from jobs.finetune_llm import FinetuneConfig
from jobs.finetune_llm import main as finetune_job
from jobs.merge_adapter import MergeConfig
from jobs.merge_adapter import main as merge_job
from llm.base import load_causal_lm, load_tokenizer, load_tuned, resolve
from slipway.cli import JobFailed
from slipway.config import load_config
from slipway.data.generate import GeneratorConfig, generate, public
from slipway.registry import Registry
from slipway.storage import Storage
from tests.wandb_files import history_keys, run_records

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = ["model.vocab_size=600", "model.hidden_size=64", "model.intermediate_size=128",
        "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.num_key_value_heads=2", "corpus.num_articles=400", "optim.epochs=2"]


@pytest.fixture(scope="module")
def llm_root(tmp_path_factory) -> str:
    """A storage root with curated articles and a tiny bootstrapped `base_lm`."""
    root = str(tmp_path_factory.mktemp("llm") / "root")
    articles = public(generate(GeneratorConfig(num_articles=120, num_users=1,
                                               num_events=1)).articles)
    os.makedirs(f"{root}/curated/articles")
    articles.to_parquet(f"{root}/curated/articles/part-0.parquet", index=False)
    bootstrap_job(load_config(BootstrapConfig, None, [f"storage.root={root}", *TINY]))
    return root


def finetune(root: str, *overrides: str):
    cfg = load_config(FinetuneConfig, None, [
        f"storage.root={root}", "optim.epochs=1", "optim.micro_batch_size=8",
        "data.max_articles=80", "max_length=320", "tracking.mode=offline", *overrides])
    return finetune_job(cfg)


@pytest.fixture(scope="module")
def zero2_adapter(llm_root):
    return finetune(llm_root, "optim.epochs=2", "optim.lr=5e-3")


def adapter_tensors(version) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(version.uri, "files", "adapter_model.safetensors"))


def test_bootstrap_registers_a_loadable_base_that_learned_the_corpus(llm_root):
    registry = Registry(Storage(llm_root))
    base = registry.get("base_lm", "champion")
    assert base.metadata["kind"] == "base_lm" and base.metadata["corpus"]["documents"] == 400
    path, _ = resolve("registry:base_lm", Storage(llm_root))
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    text = "The coach said the team would boost the season."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # An untrained model is near-uniform (perplexity ~ vocabulary size); this one learned.
    assert base.metrics["valid_perplexity"] < len(tokenizer) / 5
    assert model.config.architectures == ["LlamaForCausalLM"]
    # Reuse: a second bootstrap keeps the champion instead of training again.
    again = bootstrap_job(load_config(BootstrapConfig, None, [f"storage.root={llm_root}"]))
    assert again.version == base.version


def test_lora_under_zero2_with_two_workers_trains_only_the_adapter(llm_root, zero2_adapter):
    meta = zero2_adapter.metadata
    assert meta["kind"] == "lora_adapter" and meta["base"] == "registry:base_lm@1"
    metrics = meta["metrics"]
    assert 0 < metrics["trainable_params"] < 0.2 * metrics["total_params"]
    assert metrics["train_tokens_per_s"] > 0 and metrics["epoch"] == 1
    tensors = adapter_tensors(zero2_adapter)
    assert tensors and all("lora_" in k for k in tensors)
    # LoRA B starts at zero: a trained adapter has moved it.
    assert max(v.abs().max().item() for k, v in tensors.items() if "lora_B" in k) > 0
    assert Registry(Storage(llm_root)).aliases("articles_lora")["challenger"] == \
        zero2_adapter.version
    # Rank 0 logged the run to W&B: loss curve, learning rate, throughput, the adapter.
    by_kind = run_records(llm_root, meta["parent_run"])
    assert {"train_loss", "lr", "tokens_per_s", "valid_perplexity"} <= history_keys(by_kind)
    assert [a.artifact.name for a in by_kind["artifact"]] == [f"{meta['parent_run']}-adapter"]


def test_lora_under_zero3_exports_whole_adapter_tensors(llm_root, zero2_adapter):
    version = finetune(llm_root, "model_name=zero3_lora",
                       "optim.deepspeed=configs/deepspeed/zero3.json",
                       "optim.gradient_checkpointing=true", "optim.grad_accum=2")
    tensors = adapter_tensors(version)
    base = load_causal_lm(resolve("registry:base_lm", Storage(llm_root))[0])
    hidden = base.config.hidden_size
    q_a = next(v for k, v in tensors.items() if "q_proj.lora_A" in k)
    assert q_a.shape == (8, hidden)  # gathered from the ZeRO-3 partitions, not a shard
    metrics = version.metadata["metrics"]
    assert metrics["valid_loss"] < 20
    # Same examples and micro-batch as the ZeRO-2 run (2 epochs, a step per micro-batch); here
    # 1 epoch accumulating 2 micro-batches per optimizer step.
    batches_per_epoch = zero2_adapter.metadata["metrics"]["optimizer_steps"] // 2
    assert metrics["optimizer_steps"] == batches_per_epoch // 2


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_failed_worker_group_resumes_from_the_last_checkpoint_on_user_jsonl(llm_root,
                                                                              tmp_path):
    words = ["coach", "team", "vaccine", "market", "film", "robot"]
    rows = [{"prompt": f"Repeat the word: {w}\n### Response:", "response": w}
            for _ in range(20) for w in words]
    jsonl = write_jsonl(tmp_path / "mine.jsonl", rows)
    version = finetune(llm_root, "model_name=resumed_lora", "optim.epochs=2", "fail_at_epoch=1",
                       "data.tasks=[]", f"data.jsonl={jsonl}")
    metrics = version.metadata["metrics"]
    # Epoch 0 was checkpointed; the replacement group loaded it and ran only epoch 1.
    assert metrics["start_epoch"] == 1 and metrics["epoch"] == 1
    assert sum(version.metadata["examples"].values()) == len(rows)

    broken = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "x", "answer": "y"}] * 10)
    with pytest.raises(JobFailed, match=r"data.jsonl: .* has no \['response'\] field"):
        finetune(llm_root, "data.tasks=[]", f"data.jsonl={broken}")


def test_merged_model_gives_the_same_logits_as_base_plus_adapter(llm_root, zero2_adapter):
    merged = merge_job(load_config(MergeConfig, None, [f"storage.root={llm_root}",
                                                       "ref=challenger"]))
    storage = Storage(llm_root)
    base_path, _ = resolve("registry:base_lm", storage)
    adapter_path, _ = Registry(storage).fetch("articles_lora", "challenger")
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
    assert merged.metadata["adapter"] == "registry:articles_lora@1"


def test_evaluation_compares_tuned_with_base_on_held_out_articles(llm_root, zero2_adapter):
    report = evaluate_job(load_config(EvaluateLlmConfig, None, [
        f"storage.root={llm_root}", "max_examples_per_task=8", "max_new_tokens=8",
        "require_improvement=false", "promote=false"]))
    comparison = report["comparison"]
    assert {"perplexity", "topic_exact_match", "title_rouge_l", "qa_token_f1",
            "qa_faithfulness"} <= set(comparison)
    # The base never saw the instruction format: the tuned model predicts responses far better.
    assert comparison["perplexity"]["better"]
    assert comparison["perplexity"]["tuned"] < comparison["perplexity"]["base"]
    stored = json.loads(Registry(Storage(llm_root)).storage.read_bytes(
        "models", "articles_lora", "versions", "0001", "llm_evaluation.json"))
    assert stored["comparison"] == comparison and stored["examples"] == 24

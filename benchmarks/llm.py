"""LLM benchmark: LoRA fine-tuning throughput and quality, memory per worker under ZeRO-2,
ZeRO-3 and ZeRO-3 + CPU offload, and the retrieval index at 100k real MiniLM embeddings.

1. Quality and throughput: the demo's path on generated articles (bootstrap base, LoRA
   fine-tune with `configs/finetune_articles.yaml`, base-vs-tuned evaluation on held-out
   articles); tokens/s are all workers' non-padding training tokens per second (last epoch).
2. Memory: one larger randomly initialised Llama (`--mem-hidden`, `--mem-layers`) fine-tuned for
   one epoch under each DeepSpeed config, in the same run; per worker (rank 0) the peak resident
   memory minus the resident memory just before the model was loaded (`mem_per_worker_mb`), and
   the same at the end of the epoch.
3. Index: generated articles chunked into about `--chunks` chunks (12-word windows), embedded
   with MiniLM by the Ray Data actor pool, indexed by HNSW; build chunks/s over chunking,
   embedding and indexing. Then generated questions (real MiniLM embeddings) sent one at a time
   to HNSW and to exact search over the same vectors: queries/s and HNSW recall@10 vs exact.

Writes results/llm.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import faiss
import numpy as np
import ray

from benchmarks.common import env_info, start_ray, write_results
from slipway.config import load_config

DEEPSPEED = {"zero2": "configs/deepspeed/zero2.json", "zero3": "configs/deepspeed/zero3.json",
             "zero3_offload": "configs/deepspeed/zero3_offload.json"}


def quality(root: str) -> dict:
    """Bootstrap, fine-tune and evaluate as the demo does."""
    from jobs.bootstrap_llm import BootstrapConfig
    from jobs.bootstrap_llm import main as bootstrap_job
    from jobs.evaluate_llm import EvaluateLlmConfig
    from jobs.evaluate_llm import main as evaluate_job
    from jobs.finetune_llm import FinetuneConfig
    from jobs.finetune_llm import main as finetune_job

    common = [f"storage.root={root}", "tracking.mode=disabled"]
    bootstrap_job(load_config(BootstrapConfig, "configs/bootstrap_llm.yaml", common))
    tuned = finetune_job(load_config(FinetuneConfig, "configs/finetune_articles.yaml", common))
    report = evaluate_job(load_config(EvaluateLlmConfig, None, [
        *common, "require_improvement=false", "promote=false"]))
    m = tuned.metadata["metrics"]
    return {"finetune_tokens_per_s": m["train_tokens_per_s"],
            "trainable_params": int(m["trainable_params"]), "total_params": int(m["total_params"]),
            "base_metrics": {k: c["base"] for k, c in report["comparison"].items()},
            "tuned_metrics": {k: c["tuned"] for k, c in report["comparison"].items()},
            "finetune_examples": tuned.metadata["examples"], "evaluated_examples":
            report["examples"]}


def memory(root: str, hidden: int, layers: int) -> dict:
    """Per-worker memory and tokens/s of one LoRA epoch under each DeepSpeed config."""
    from jobs.finetune_llm import FinetuneConfig
    from jobs.finetune_llm import main as finetune_job
    from llm.base import resolve
    from llm.bootstrap import LlamaShape, init_model
    from slipway.models.hf import load_tokenizer
    from slipway.registry import Registry
    from slipway.storage import Storage

    storage = Storage(root)
    tokenizer = load_tokenizer(resolve("registry:base_lm", storage)[0])
    shape = LlamaShape(hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                       num_hidden_layers=layers, num_attention_heads=hidden // 64,
                       num_key_value_heads=hidden // 64)
    with tempfile.TemporaryDirectory() as folder:
        init_model(shape, tokenizer, seed=0).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        base = Registry(storage).register_folder("bench_base", folder, kind="base_lm")
    out: dict = {}
    for name, path in DEEPSPEED.items():
        version = finetune_job(load_config(FinetuneConfig, "configs/finetune_articles.yaml", [
            f"storage.root={root}", "tracking.mode=disabled", f"model_name=bench_{name}",
            f"base=registry:bench_base@{base.version}", f"optim.deepspeed={path}",
            "optim.epochs=1", "optim.micro_batch_size=4", "data.max_articles=20"]))
        m = version.metadata["metrics"]
        out[name] = {"mem_mb": m["peak_rss_mb"] - m["rss_before_model_mb"],
                     "peak_rss_mb": m["peak_rss_mb"],
                     "end_of_epoch_mb": m["rss_mb"] - m["rss_before_model_mb"],
                     "tokens_per_s": m["train_tokens_per_s"],
                     "total_params": int(m["total_params"])}
    return out


def one_at_a_time(index: faiss.Index, queries: np.ndarray, k: int = 10) -> float:
    """Queries per second with each query sent alone."""
    started = time.perf_counter()
    for i in range(len(queries)):
        index.search(queries[i:i + 1], k)
    return len(queries) / (time.perf_counter() - started)


def index_section(root: str, chunks: int, queries: int) -> dict:
    """Build the HNSW index over ~`chunks` real embeddings; QPS and recall against exact."""
    from jobs.build_index import evaluation_questions
    from llm.index import (
        IndexSettings,
        Shard,
        documents,
        embed_queries,
        neighbour_recall,
        update,
    )
    from llm.retrieval_eval import retrieval_metrics
    from slipway.data.generate import GeneratorConfig, generate, public
    from slipway.storage import Storage

    settings = IndexSettings(name="bench", chunk_words=12, overlap_words=0, embed_actors=2,
                             hnsw_threshold=min(50_000, chunks // 2))
    articles = public(generate(GeneratorConfig(seed=11, num_articles=max(10, chunks // 4),
                                               num_users=1, num_events=1)).articles)
    docs = documents(articles, settings)
    started = time.perf_counter()
    index, stats = update(Storage(root), docs, settings)
    build_seconds = time.perf_counter() - started
    asked, sources = evaluation_questions(docs, queries, seed=0)
    q = embed_queries(asked, settings.encoder, settings.max_length)
    exact = faiss.IndexFlatIP(index.vectors.shape[1])
    exact.add(index.vectors)
    exact_qps = one_at_a_time(exact, q)
    hnsw_qps = one_at_a_time(index.shards[0].index, q)
    exact_view = dataclasses.replace(index, shards=[Shard(exact, 0)])
    relevant = [{source} for source in sources]
    return {"index_chunks": len(index.chunks), "index_kind": index.manifest["kind"],
            "index_chunks_per_s": len(index.chunks) / build_seconds,
            "embed_chunks_per_s": stats.chunks_embedded / stats.embed_seconds,
            "exact_qps": exact_qps, "hnsw_qps": hnsw_qps,
            "hnsw_recall_at_10": neighbour_recall(index.search(q, 10)[1],
                                                  exact.search(q, 10)[1]),
            "queries": len(asked),
            "retrieval_hnsw": retrieval_metrics(index, "dense", asked, q, relevant),
            "retrieval_exact": retrieval_metrics(exact_view, "dense", asked, q, relevant)}


def main() -> None:
    """Measure the three sections, write results/llm.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--mem-hidden", type=int, default=768)
    parser.add_argument("--mem-layers", type=int, default=12)
    parser.add_argument("--root", default=None, help="storage root to keep (default: a temp dir)")
    args = parser.parse_args()
    start_ray()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or scratch
        articles = f"{root}/curated/articles"
        if not os.path.exists(articles):
            from slipway.data.generate import GeneratorConfig, generate, public

            os.makedirs(articles)
            public(generate(GeneratorConfig(num_articles=600, num_users=1, num_events=1))
                   .articles).to_parquet(f"{articles}/part-0.parquet", index=False)
        results = quality(root)
        per_config = memory(root, args.mem_hidden, args.mem_layers)
        retrieval = index_section(root, args.chunks, args.queries)
    ray.shutdown()
    results.update(retrieval)
    results.update({
        "env": env_info(("ray", "torch", "deepspeed", "peft", "transformers", "faiss-cpu")),
        "mem_per_worker_mb": {k: v["mem_mb"] for k, v in per_config.items()},
        "zero_configs": per_config,
    })
    gates = ("perplexity", "topic_exact_match", "title_rouge_l", "qa_token_f1", "qa_faithfulness")
    write_results("llm", results, [
        ("fine-tuning tokens/s (2 workers, ZeRO-2)", f"{results['finetune_tokens_per_s']:,.0f}"),
        ("trainable / total parameters",
         f"{results['trainable_params']:,} / {results['total_params']:,} "
         f"({results['trainable_params'] / results['total_params']:.1%})"),
        *[(f"{g}: base -> tuned",
           f"{results['base_metrics'][g]:.3f} -> {results['tuned_metrics'][g]:.3f}")
          for g in gates],
        *[(f"memory per worker, {k} ({v['total_params'] / 1e6:.0f}M params)",
           f"{v['mem_mb']:,.0f} MB at peak, {v['end_of_epoch_mb']:,.0f} MB after the epoch "
           f"({v['tokens_per_s']:,.0f} tokens/s)") for k, v in per_config.items()],
        ("index build chunks/s", f"{results['index_chunks_per_s']:,.0f} "
                                 f"({results['index_chunks']:,} chunks)"),
        ("exact / HNSW queries/s (one at a time)",
         f"{results['exact_qps']:,.0f} / {results['hnsw_qps']:,.0f} "
         f"({results['hnsw_qps'] / results['exact_qps']:.1f}x)"),
        ("HNSW recall@10 vs exact", f"{results['hnsw_recall_at_10']:.3f}"),
        ("retrieval recall@10 (source article)",
         f"{results['retrieval_hnsw']['recall_at_10']:.3f}"),
    ])


if __name__ == "__main__":
    main()

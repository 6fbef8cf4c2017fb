"""Model quality on real text of this machine that nobody here wrote, beside simple baselines.

Text classification: the one-line summaries of its manual pages labelled by section (user
command, library call, file format, overview, administration). `jobs.train` trains the
candidates (a head on the frozen MiniLM, MiniLM fine-tuned by two data-parallel workers, TF-IDF +
logistic regression, and that regression on TF-IDF and MiniLM embeddings combined) on one split
and picks the best on validation; `jobs.evaluate` scores each on the held-out test split beside
the TF-IDF + LR baseline fitted on the same training rows.
Encoder fine-tuning throughput is measured with one and with two workers of one CPU each.

Retrieval: section-1 manual pages (their DESCRIPTION text, gcloud's generated copies left out)
indexed by `jobs.build_index`; each page is asked for by its NAME line's summary, from a
questions file as a user would give one; recall@1/5/10, MRR@10 and nDCG@10 of the page for
dense (MiniLM + FAISS), lexical (BM25) and hybrid (reciprocal rank fusion) search.

Scale: the IVF-PQ option of the index on 1M clustered synthetic embeddings (384-d, as MiniLM's):
its recall@10 against exact search (codes alone, and re-ranked exactly from the embeddings as
the index searches), bytes per vector held in memory (the embeddings stay on disk, mapped), and
queries/s against exact search (1,000 queries searched as one batch by each). The same vectors
built as `--shards` IVF-PQ shards by Ray Data: build time against the single structure, and
recall@10 and queries/s of the shards searched side by side and merged by score.

    python -m benchmarks.quality [--per-section 300] [--pages 1000] [--vectors 1000000]
                                 [--shards 4] [--only text|scaling|retrieval|scale]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import RESULTS, env_info, start_ray, write_results

MODES = ("dense", "lexical", "hybrid")
CANDIDATES = ("frozen_encoder", "tuned_encoder", "lexical", "combined")


def text_section(root: str, per_section: int) -> dict:
    """Test macro-F1 of each candidate, of the one picked on validation and of the TF-IDF + LR
    baseline on the same split; fine-tuning samples/s with two workers against one."""
    from jobs.evaluate import EvaluateConfig
    from jobs.evaluate import main as evaluate_job
    from jobs.train import TrainConfig
    from jobs.train import main as train_job
    from slipway.config import load_config
    from slipway.data.man_pages import man_page_summaries

    pages = man_page_summaries(per_section)
    os.makedirs(f"{root}/raw", exist_ok=True)
    pages.to_csv(f"{root}/raw/man_pages.csv", index=False)
    common = [f"storage.root={root}", "tracking.mode=disabled", "text.path=raw/man_pages.csv",
              "text.text_columns=[text]", "text.label_column=label"]
    train_job(load_config(TrainConfig, "configs/train_text.yaml", [
        *common, "model_name=man_sections", f"text.candidates=[{', '.join(CANDIDATES)}]"]))
    report = evaluate_job(load_config(EvaluateConfig, None, [
        *common[:2], "model_name=man_sections", "against=null"]))
    compared = json.loads(open(report.report_uri).read())["candidates"]
    return {"text_examples": len(pages),
            "text_macro_f1": {name: c["test"]["macro_f1"]
                              for name, c in compared["candidates"].items()},
            "text_valid_macro_f1": {name: c["valid_macro_f1"]
                                    for name, c in compared["candidates"].items()},
            "text_picked": compared["best"], "best_text_macro_f1": report.metrics["macro_f1"],
            "tfidf_lr_macro_f1": report.baseline["macro_f1"]}


def scaling_section(root: str, per_section: int) -> dict:
    """Encoder fine-tuning samples/s on the same data for 3 epochs with 1 and with 2 workers
    of 1 CPU each (the median of epochs 2-3)."""
    from jobs.train import TrainConfig
    from jobs.train import main as train_job
    from slipway.config import load_config
    from slipway.data.man_pages import man_page_summaries

    os.makedirs(f"{root}/raw", exist_ok=True)
    man_page_summaries(per_section).to_csv(f"{root}/raw/man_pages.csv", index=False)
    speed = {}
    for workers in (1, 2):
        run = train_job(load_config(TrainConfig, "configs/train_text.yaml", [
            f"storage.root={root}", "tracking.mode=disabled", "text.path=raw/man_pages.csv",
            "text.text_columns=[text]", "text.label_column=label",
            f"model_name=man_scaling_{workers}w", "text.train_encoder=true",
            "text.patience=null", "model.epochs=3", f"trainer.num_workers={workers}"]))
        speed[workers] = float(run.history["train_samples_per_s"].iloc[1:].median())
    return {"encoder_finetune_samples_per_s": {"1w": speed[1], "2w": speed[2]},
            "encoder_finetune_scaling_2w_vs_1w": speed[2] / speed[1]}


def retrieval_section(root: str, count: int) -> dict:
    """recall@1/5, MRR@10 (and recall@10, nDCG@10) of dense, lexical and hybrid search."""
    from jobs.build_index import BuildIndexConfig
    from jobs.build_index import main as build_index
    from slipway.config import load_config
    from slipway.data.man_pages import man_page_documents

    pages = man_page_documents(count)
    os.makedirs(f"{root}/curated", exist_ok=True)
    pages.to_parquet(f"{root}/curated/man_pages.parquet")
    questions = f"{root}/questions.jsonl"
    with open(questions, "w") as out:
        for summary, page in zip(pages["summary"], pages["page"], strict=True):
            out.write(json.dumps({"question": summary, "relevant": [page]}) + "\n")
    metrics = build_index(load_config(BuildIndexConfig, None, [
        f"storage.root={root}", "tracking.mode=disabled", "source=curated/man_pages.parquet",
        "index.name=man_pages", "index.id_column=page", "index.text_column=body",
        "index.title_column=title", f"questions_file={questions}"]))
    out = {"retrieval_documents": len(pages), "retrieval_chunks": metrics["chunks"]}
    for key in ("recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10", "ndcg_at_10"):
        out[key] = {mode: metrics[f"{mode}/{key}"] for mode in MODES}
    return out


def clustered_vectors(centers: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """L2-normalised points around random ones of `centers`, with Gaussian noise of 0.8 of the
    centers' scale per dimension."""
    points = centers[rng.integers(0, len(centers), count)]
    points += rng.standard_normal(points.shape, dtype=np.float32) * 0.8
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def scale_section(count: int, shards: int, queries: int = 1000) -> dict:
    """IVF-PQ (the index's `approximate: ivfpq`, its defaults) against exact search, as one
    structure and as `shards` shards built in parallel by Ray Data and searched side by side,
    merged by score."""
    import faiss

    from llm.index import (
        IndexSettings,
        build_faiss,
        build_shards,
        merge_results,
        neighbour_recall,
        rerank,
    )

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, 384)).astype(np.float32)
    vectors = clustered_vectors(centers, count, rng)
    asked = clustered_vectors(centers, queries, rng)  # new points of the same clusters
    exact = faiss.IndexFlatIP(384)
    exact.add(vectors)
    settings = IndexSettings(hnsw_threshold=1, approximate="ivfpq")
    started = time.perf_counter()
    ivfpq = build_faiss(vectors, settings)
    build_seconds = time.perf_counter() - started

    def reranked() -> np.ndarray:  # what VectorIndex.search does for an IVF-PQ index
        candidates = ivfpq.search(asked, 10 * settings.rerank_factor)[1]
        return rerank(asked, candidates, vectors, 10)[1]

    started = time.perf_counter()
    truth = exact.search(asked, 10)[1]
    exact_qps = queries / (time.perf_counter() - started)
    started = time.perf_counter()
    found = reranked()
    ivfpq_qps = queries / (time.perf_counter() - started)
    sharded_settings = settings.model_copy(update={"shards": shards})
    started = time.perf_counter()
    parts = build_shards(vectors, sharded_settings)
    sharded_seconds = time.perf_counter() - started
    started = time.perf_counter()
    merged = merge_results([part.search(asked, 10, vectors, None, settings.rerank_factor)
                            for part in parts], 10)[1]
    sharded_qps = queries / (time.perf_counter() - started)
    return {"sharded_shards": shards, "sharded_build_seconds": sharded_seconds,
            "sharded_build_speedup": build_seconds / sharded_seconds,
            "sharded_recall_at_10": neighbour_recall(merged, truth),
            "sharded_qps": sharded_qps,
            "ivfpq_vectors": count, "ivfpq_lists": ivfpq.nlist, "ivfpq_nprobe": ivfpq.nprobe,
            "ivfpq_pq_m": settings.pq_m, "ivfpq_rerank_factor": settings.rerank_factor,
            "ivfpq_build_seconds": build_seconds,
            "ivfpq_recall_at_10": neighbour_recall(found, truth),
            "ivfpq_codes_only_recall_at_10": neighbour_recall(ivfpq.search(asked, 10)[1], truth),
            "ivfpq_bytes_per_vector": len(faiss.serialize_index(ivfpq)) / count,
            "flat_bytes_per_vector": len(faiss.serialize_index(exact)) / count,
            "flat_qps": exact_qps, "ivfpq_qps": ivfpq_qps,
            "ivfpq_qps_vs_flat": ivfpq_qps / exact_qps}


def main() -> None:
    """Measure both sections and write results/quality.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-section", type=int, default=300, help="summaries per section")
    parser.add_argument("--pages", type=int, default=1000, help="manual pages to index")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="for the IVF-PQ scale")
    parser.add_argument("--shards", type=int, default=4, help="IVF-PQ shards built by Ray Data")
    parser.add_argument("--only", choices=("text", "scaling", "retrieval", "scale"),
                        default=None,
                        help="measure one section, keeping the others' recorded figures")
    args = parser.parse_args()
    start_ray()
    path = RESULTS / "quality.json"
    results = json.loads(path.read_text()) if args.only and path.exists() else {}
    results["env"] = env_info(("ray", "scikit-learn", "bm25s", "faiss-cpu"))
    with tempfile.TemporaryDirectory() as root:
        if args.only in (None, "text"):
            results |= text_section(f"{root}/text", args.per_section)
        if args.only in (None, "scaling"):
            results |= scaling_section(f"{root}/scaling", args.per_section)
        if args.only in (None, "retrieval"):
            results |= retrieval_section(f"{root}/retrieval", args.pages)
    if args.only in (None, "scale"):
        results |= scale_section(args.vectors, args.shards)
    table = []
    if "text_macro_f1" in results:
        table += [(f"test macro-F1 {name}", f"{value:.3f}")
                  for name, value in results["text_macro_f1"].items()]
        table += [("picked on validation", results["text_picked"]),
                  ("test macro-F1 TF-IDF + LR baseline", f"{results['tfidf_lr_macro_f1']:.3f}")]
    if "encoder_finetune_scaling_2w_vs_1w" in results:
        table.append(("fine-tuning 2 workers / 1 worker",
                      f"{results['encoder_finetune_scaling_2w_vs_1w']:.2f}x"))
    if "recall_at_5" in results:
        table += [(f"{mode} retrieval", ", ".join(
            f"{key} {results[key][mode]:.3f}" for key in ("recall_at_1", "recall_at_5",
                                                          "mrr_at_10", "ndcg_at_10")))
                  for mode in MODES]
    if "ivfpq_recall_at_10" in results:
        table.append((f"IVF-PQ at {results['ivfpq_vectors']:,} vectors",
                      f"recall@10 {results['ivfpq_recall_at_10']:.3f} (codes alone "
                      f"{results['ivfpq_codes_only_recall_at_10']:.3f}), "
                      f"{results['ivfpq_bytes_per_vector']:.0f} bytes/vector in memory (flat "
                      f"{results['flat_bytes_per_vector']:.0f}), "
                      f"{results['ivfpq_qps_vs_flat']:.1f}x the queries/s of exact search"))
    if "sharded_recall_at_10" in results:
        table.append((f"IVF-PQ as {results['sharded_shards']} shards (Ray Data)",
                      f"built {results['sharded_build_speedup']:.2f}x as fast as one, "
                      f"recall@10 {results['sharded_recall_at_10']:.3f}, "
                      f"{results['sharded_qps']:.0f} queries/s"))
    write_results("quality", results, table)


if __name__ == "__main__":
    main()

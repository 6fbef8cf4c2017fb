"""Build or update the retrieval index, then measure retrieval on questions with known sources.

Ray Data chunks the documents and an actor pool embeds them with MiniLM; FAISS indexes the
embeddings (exact below `index.hnsw_threshold` chunks, HNSW from there). Re-running embeds only
new and changed documents. The evaluation asks questions generated from the articles (whose
source document is known) and reports recall@k and MRR; for an HNSW index also its recall@10
against exact search over the same embeddings.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
import ray
from pydantic import Field

from llm.index import (
    IndexSettings,
    documents,
    embed_queries,
    neighbour_recall,
    retrieval_metrics,
    update,
)
from llm.instructions import questions
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.data.tables import locate, read_table
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run


class BuildIndexConfig(JobConfig):
    """Source documents, index settings and the retrieval evaluation."""

    source: str = Field(default="curated/articles",
                        description="table of documents; relative paths are under storage.root")
    index: IndexSettings = IndexSettings()
    eval_questions: int = Field(default=200, ge=0, description="0 skips the evaluation")
    seed: int = 0


def evaluation_questions(docs, count: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to `count` (question, source doc id) pairs from generated article sentences."""
    rng = np.random.default_rng(seed)
    asked, sources = [], []
    for i in rng.permutation(len(docs)):
        pairs = questions(docs["text"].iloc[i])
        if pairs:
            asked.append(pairs[int(rng.integers(len(pairs)))][0])
            sources.append(docs["doc_id"].iloc[i])
        if len(asked) == count:
            break
    return asked, sources


def main(cfg: BuildIndexConfig) -> dict:
    """Update the index from the source and evaluate it."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    with track_run("build_index", cfg, storage) as run:
        try:
            docs = documents(read_table(cfg.source, storage, "source"), cfg.index)
        except ValueError as exc:
            raise JobFailed(str(exc)) from None
        where, parts = locate(cfg.source, storage)
        run.add_data_version(cfg.source, where.version(*parts))
        started = time.perf_counter()
        index, stats = update(storage, docs, cfg.index)
        uri = index.save(storage, cfg.index.name)
        seconds = time.perf_counter() - started
        metrics = {"documents": len(docs), "chunks": len(index.chunks),
                   "chunks_embedded": stats.chunks_embedded,
                   "embed_chunks_per_s": stats.chunks_embedded / max(stats.embed_seconds, 1e-9),
                   "build_seconds": seconds}
        asked, sources = evaluation_questions(docs, cfg.eval_questions, cfg.seed)
        if asked:
            queries = embed_queries(asked, cfg.index.encoder, cfg.index.max_length)
            metrics.update(retrieval_metrics(index, queries, sources))
            if index.manifest["kind"] == "hnsw":
                exact = faiss.IndexFlatIP(index.vectors.shape[1])
                exact.add(index.vectors)
                metrics["hnsw_recall_at_10"] = neighbour_recall(index.index, exact, queries)
        index.manifest["evaluation"] = {k: v for k, v in metrics.items() if "recall" in k
                                        or "mrr" in k} | {"questions": len(asked)}
        storage.write_json(index.manifest, "indexes", cfg.index.name, "manifest.json")
        run.log(metrics)
    print(f"index {cfg.index.name} ({index.manifest['kind']}): {len(docs):,} documents "
          f"({stats.new} new, {stats.changed} changed, {stats.unchanged} unchanged, "
          f"{stats.removed} removed), {len(index.chunks):,} chunks; embedded "
          f"{stats.chunks_embedded:,} chunks at {metrics['embed_chunks_per_s']:,.0f}/s; "
          f"{'rebuilt' if stats.rebuilt else 'updated in place'}; {uri}")
    if asked:
        print(f"retrieval on {len(asked)} questions: "
              + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                          if "recall" in k or "mrr" in k))
    return metrics


if __name__ == "__main__":
    run_job(BuildIndexConfig, main, __doc__)
    ray.shutdown()

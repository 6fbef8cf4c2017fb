"""Build or update the retrieval index, then measure retrieval on questions with known sources.

Ray Data chunks the documents and an actor pool embeds them with MiniLM; FAISS indexes the
embeddings (exact below `index.hnsw_threshold` chunks, HNSW or IVF-PQ from there) and BM25 the chunk
texts. Re-running embeds only new and changed documents. The evaluation asks the questions of
`questions_file` (the user's own: JSON lines of question and relevant doc ids), or else
questions generated from the articles (whose source document is known), and reports recall@k,
MRR@10 and nDCG@10 of dense, lexical and hybrid search side by side; for an approximate index
also its recall@10 against exact search over the same embeddings.
"""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np
import ray
from pydantic import Field

from llm.index import (
    IndexSettings,
    documents,
    embed_queries,
    neighbour_recall,
    update,
)
from llm.instructions import questions
from llm.lexical_index import MODES
from llm.retrieval_eval import compare_modes, read_questions
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
    eval_questions: int = Field(default=200, ge=0, description="generated questions when no "
                                "questions_file is given; 0 skips the evaluation")
    questions_file: str | None = Field(
        default=None, description='your questions: a JSON-lines file of {"question": "...", '
        '"relevant": ["doc id", ...]}')
    seed: int = 0


def evaluation_questions(docs, count: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to `count` (question, source doc id) pairs from generated article sentences: the same
    ones for the same documents and seed, in whatever order the documents were read."""
    docs = docs.sort_values("doc_id", kind="stable")
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


def questions_to_ask(cfg: BuildIndexConfig, docs) -> tuple[list[str], list[set[str]]]:
    """The questions file's questions and relevant ids, or generated ones with their source."""
    if cfg.questions_file is None:
        asked, sources = evaluation_questions(docs, cfg.eval_questions, cfg.seed)
        return asked, [{source} for source in sources]
    path = Path(cfg.questions_file)
    if not path.is_file():
        raise JobFailed(f"questions_file: no file {path}; give a JSON-lines file of questions")
    try:
        return read_questions(path.read_text(), f"questions_file {path}", set(docs["doc_id"]))
    except ValueError as exc:
        raise JobFailed(str(exc)) from None


def main(cfg: BuildIndexConfig) -> dict:
    """Update the index from the source and evaluate it."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    with track_run("build_index", cfg, storage) as run:
        try:
            docs = documents(read_table(cfg.source, storage, "source"), cfg.index)
        except ValueError as exc:
            raise JobFailed(str(exc)) from None
        asked, relevant = questions_to_ask(cfg, docs)  # a bad file fails before the build
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
        evaluation: dict = {"questions": len(asked),
                            "source": cfg.questions_file or "generated"}
        if asked:
            queries = embed_queries(asked, cfg.index.encoder, cfg.index.max_length)
            evaluation.update(compare_modes(index, asked, queries, relevant))
            metrics.update({f"{mode}/{key}": value for mode in MODES
                            for key, value in evaluation[mode].items()})
            kind = index.manifest["kind"]
            if kind != "exact":
                exact = faiss.IndexFlatIP(index.vectors.shape[1])
                exact.add(index.vectors)
                evaluation[f"{kind}_recall_at_10"] = neighbour_recall(
                    index.search(queries, 10)[1], exact.search(queries, 10)[1])
                metrics[f"{kind}_recall_at_10"] = evaluation[f"{kind}_recall_at_10"]
        index.manifest["evaluation"] = evaluation
        storage.write_json(index.manifest, "indexes", cfg.index.name, "manifest.json")
        run.log(metrics)
    print(f"index {cfg.index.name} ({index.manifest['kind']}): {len(docs):,} documents "
          f"({stats.new} new, {stats.changed} changed, {stats.unchanged} unchanged, "
          f"{stats.removed} removed), {len(index.chunks):,} chunks; embedded "
          f"{stats.chunks_embedded:,} chunks at {metrics['embed_chunks_per_s']:,.0f}/s; "
          f"{'rebuilt' if stats.rebuilt else 'updated in place'}; {uri}")
    if asked:
        print(f"retrieval on {len(asked)} questions ({evaluation['source']}):")
        for mode in MODES:
            print(f"  {mode:8s}" + ", ".join(f"{k} {v:.3f}" for k, v in evaluation[mode].items()))
    return metrics


if __name__ == "__main__":
    run_job(BuildIndexConfig, main, __doc__)
    ray.shutdown()

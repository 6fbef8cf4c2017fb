"""Retrieval quality on questions whose relevant documents are known: recall@k, MRR@10 and
nDCG@10 of the document ranking (chunks collapsed to their documents, best first), for dense,
lexical and hybrid search over the same index.

Users bring their own questions as JSON lines, one `{"question": "...", "relevant": ["doc id",
...]}` per line; `read_questions` checks every line against the index before anything runs.
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import Field, ValidationError

from llm.index import VectorIndex
from llm.lexical_index import MODES, Mode
from slipway.config import StrictModel

KS = (1, 5, 10)
CHUNK_DEPTH = 50  # chunks searched per question, collapsed to documents
LINE_FORMAT = '{"question": "...", "relevant": ["doc id", ...]}'


class Question(StrictModel):
    """One line of a questions file."""

    question: str = Field(min_length=1)
    relevant: list[str | int] = Field(min_length=1)


def read_questions(text: str, source: str, known: set[str]) -> tuple[list[str], list[set[str]]]:
    """Questions and their relevant doc ids from JSON lines; a bad line or a doc id that is not
    in the index raises ValueError naming the line."""
    asked, relevant = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = Question.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} line {number}: not JSON ({exc.msg}); each line is "
                             f"{LINE_FORMAT}") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "line"
            raise ValueError(f"{source} line {number}: {field}: {error['msg']}; each line is "
                             f"{LINE_FORMAT}") from None
        ids = {str(d) for d in row.relevant}
        unknown = sorted(ids - known)
        if unknown:
            raise ValueError(f"{source} line {number}: relevant doc ids {unknown} are not in "
                             "the index (ids are the source's id column, as text)")
        asked.append(row.question)
        relevant.append(ids)
    if not asked:
        raise ValueError(f"{source}: no questions; each line is {LINE_FORMAT}")
    return asked, relevant


def document_rankings(index: VectorIndex, rows: np.ndarray) -> list[list[str]]:
    """Each query's chunk rows as a ranking of distinct documents (first chunk counts)."""
    doc_ids = index.chunks["doc_id"].to_numpy()
    return [list(dict.fromkeys(str(doc_ids[r]) for r in found if r >= 0)) for found in rows]


def ranking_metrics(rankings: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """Mean recall@1/5/10 (share of the relevant documents in the top k), MRR@10 and binary
    nDCG@10 over queries."""
    out = {f"recall_at_{k}": float(np.mean([len(set(r[:k]) & rel) / len(rel)
                                            for r, rel in zip(rankings, relevant, strict=True)]))
           for k in KS}
    reciprocal, ndcg = [], []
    for ranking, rel in zip(rankings, relevant, strict=True):
        hits = [i for i, doc in enumerate(ranking[:10]) if doc in rel]
        reciprocal.append(1 / (hits[0] + 1) if hits else 0.0)
        ideal = sum(1 / np.log2(i + 2) for i in range(min(len(rel), 10)))
        ndcg.append(sum(1 / np.log2(i + 2) for i in hits) / ideal)
    return out | {"mrr_at_10": float(np.mean(reciprocal)), "ndcg_at_10": float(np.mean(ndcg))}


def retrieval_metrics(index: VectorIndex, mode: Mode, questions: list[str],
                      vectors: np.ndarray | None, relevant: list[set[str]]) -> dict[str, float]:
    """`ranking_metrics` of one search mode (`vectors`: the questions' embeddings)."""
    _, rows = index.retrieve(mode, questions, vectors, CHUNK_DEPTH)
    return ranking_metrics(document_rankings(index, rows), relevant)


def compare_modes(index: VectorIndex, questions: list[str], vectors: np.ndarray,
                  relevant: list[set[str]]) -> dict[str, dict[str, float]]:
    """`retrieval_metrics` of dense, lexical and hybrid search, side by side."""
    return {mode: retrieval_metrics(index, mode, questions, vectors, relevant)
            for mode in MODES}

"""The retrieval index's lexical side and the fusion of both sides.

BM25 (bm25s: sparse matrices, Snowball stems, English stop words) over the same chunk texts the
dense side embeds, so a chunk's row is its id on both sides. Exact names and rare terms
(`--no-clobber`, `EADDRINUSE`) are what BM25 finds and MiniLM blurs; paraphrases are the
reverse. Hybrid search fuses the two rankings by reciprocal rank fusion (Cormack et al., 2009):
a chunk's score is the sum over sides of 1 / (c + its rank there).
"""

from __future__ import annotations

import os
import tempfile
from typing import Literal

import bm25s
import numpy as np
import Stemmer

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
RRF_C = 60  # the constant of reciprocal rank fusion (the paper's value)
_STEMMER = Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased, stop words dropped, Snowball-stemmed word tokens of each text."""
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_STEMMER, return_ids=False,
                          show_progress=False)


def build_bm25(texts: list[str]) -> bm25s.BM25:
    """A BM25 index whose document i is `texts[i]`."""
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(list(texts), stopwords="en", stemmer=_STEMMER,
                              show_progress=False), show_progress=False)
    return bm25


def bm25_files(bm25: bm25s.BM25) -> dict[str, bytes]:
    """The index as bm25s saves it (sparse score matrix, vocabulary, parameters): name -> bytes."""
    with tempfile.TemporaryDirectory() as folder:
        bm25.save(folder, show_progress=False)
        return {name: open(os.path.join(folder, name), "rb").read()
                for name in sorted(os.listdir(folder))}


def load_bm25(files: dict[str, bytes]) -> bm25s.BM25:
    """The index `bm25_files` wrote."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as out:
                out.write(data)
        return bm25s.BM25.load(folder, show_progress=False)


def search_bm25(bm25: bm25s.BM25, queries: list[str], k: int,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BM25 scores and rows of the `k` best chunks per query (row -1 where fewer than k chunks
    share a term with it); `allowed`, a boolean mask over rows, keeps only those rows."""
    size = bm25.scores["num_docs"]
    mask = None if allowed is None else allowed.astype(np.float32)
    rows, scores = bm25.retrieve(tokenize(queries), k=min(k, size), show_progress=False,
                                 weight_mask=mask)
    rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    rows[scores <= 0] = -1  # no term in common: not a match
    if k > size:
        pad = ((0, 0), (0, k - size))
        rows = np.pad(rows, pad, constant_values=-1)
        scores = np.pad(scores, pad)
    return scores, rows


def reciprocal_rank_fusion(rankings: list[np.ndarray], k: int, c: int = RRF_C
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Fused scores and rows of the `k` best per query from several (queries x depth) row
    rankings (-1 = empty slot); ties keep the first ranking's order."""
    queries = rankings[0].shape[0]
    scores = np.zeros((queries, k), np.float32)
    rows = np.full((queries, k), -1, np.int64)
    for q in range(queries):
        fused: dict[int, float] = {}
        for ranking in rankings:
            for rank, row in enumerate(ranking[q]):
                if row >= 0:
                    fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (c + rank + 1)
        best = sorted(fused.items(), key=lambda item: -item[1])[:k]
        rows[q, :len(best)] = [r for r, _ in best]
        scores[q, :len(best)] = [s for _, s in best]
    return scores, rows

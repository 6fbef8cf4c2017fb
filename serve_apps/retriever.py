"""Retriever deployment: top-k chunks by dense (the index's encoder, FAISS), lexical (BM25) or
hybrid (both, fused by reciprocal rank) search, chosen per request.

Concurrent queries are embedded and searched together (`@serve.batch`): one encoder forward
for the batch's dense and hybrid queries and one search per mode and filter. Filters name the
index's `filter_columns`; another column is a 400 naming them. The same encoder answers
`/v1/embeddings`. A rebuilt index is followed (serve_apps/follow.py): served within the app's
`follow_interval_s`.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from llm.index import VectorIndex
from llm.lexical_index import Mode
from serve_apps.errors import RequestError
from serve_apps.follow import follow
from slipway.models.text import Embedder
from slipway.storage import Storage


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.2})
class Retriever:
    """Holds one index and one encoder for the life of the replica."""

    def __init__(self, storage_root: str, index_name: str, follow_interval_s: float) -> None:
        self.storage, self.name = Storage(storage_root), index_name
        self.loaded: tuple[VectorIndex, Embedder, str] = self._load(None)
        follow(self._refresh, follow_interval_s, f"index {index_name}")

    def _load(self, embedder: Embedder | None) -> tuple[VectorIndex, Embedder, str]:
        """The index, its encoder (`embedder` when the index still uses it) and the manifest's
        version."""
        stamp = self.storage.version("indexes", self.name, "manifest.json")
        index = VectorIndex.load(self.storage, self.name)
        settings = index.manifest["settings"]
        if embedder is None or (embedder.name, embedder.model.max_length) != (
                settings["encoder"], settings["max_length"]):
            embedder = Embedder(settings["encoder"], settings["max_length"])
        return index, embedder, stamp

    def _refresh(self) -> None:
        """Load the index again if a build replaced it."""
        if self.storage.version("indexes", self.name, "manifest.json") != self.loaded[2]:
            self.loaded = self._load(self.loaded[1])

    @staticmethod
    def _embed(embedder: Embedder, texts: list[str]) -> np.ndarray:
        return embedder({"text": np.asarray(texts, dtype=object)})["x"]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _search(self, queries: list[tuple[str, int, Mode, tuple]]) -> list[list[dict]]:
        index, embedder, _ = self.loaded  # one index for the whole batch

        def run() -> list[list[dict]]:
            embedded = [i for i, (_, _, mode, _) in enumerate(queries) if mode != "lexical"]
            row_of = {i: j for j, i in enumerate(embedded)}
            if embedded:
                vectors = self._embed(embedder, [queries[i][0] for i in embedded])
            found: list[list[dict]] = [[] for _ in queries]
            chunks = index.chunks
            for mode, filters in {(m, f) for _, _, m, f in queries}:
                picked = [i for i, (_, _, m, f) in enumerate(queries) if (m, f) == (mode, filters)]
                scores, rows = index.retrieve(
                    mode, [queries[i][0] for i in picked],
                    None if mode == "lexical" else vectors[[row_of[i] for i in picked]],
                    max(queries[i][1] for i in picked),
                    index.allowed(dict(filters)) if filters else None)
                for j, i in enumerate(picked):
                    k = queries[i][1]
                    found[i] = [{"chunk_id": int(r), "doc_id": str(chunks["doc_id"].iat[r]),
                                 "title": str(chunks["title"].iat[r]),
                                 "text": str(chunks["text"].iat[r]), "score": float(s)}
                                for s, r in zip(scores[j][:k], rows[j][:k], strict=True) if r >= 0]
            return found

        return await asyncio.to_thread(run)

    async def retrieve(self, query: str, k: int, mode: Mode,
                       filters: dict[str, list[str]] | None = None) -> dict:
        """The `k` best chunks for `query`, best first, among those whose filter columns hold
        one of the given values: cosine scores (dense), BM25 scores (lexical) or
        reciprocal-rank-fusion scores (hybrid)."""
        kept = self.loaded[0].manifest["settings"].get("filter_columns", [])
        unknown = sorted(set(filters or {}) - set(kept))
        if unknown:  # refused here, before the batch, so the batch's other requests are served
            raise RequestError(400, f"filters {unknown}: index {self.name!r} filters on {kept} "
                                    "(its index.filter_columns)")
        key = tuple(sorted((c, tuple(v)) for c, v in (filters or {}).items()))
        return {"index": self.name, "mode": mode,
                "chunks": await self._search((query, k, mode, key))}

    async def embed(self, texts: list[str]) -> dict:
        """Sentence embeddings of `texts` (L2-normalised), the encoder's name and the number
        of tokens it read."""
        _, embedder, _ = self.loaded

        def run() -> tuple[np.ndarray, int]:  # tokenizing and the model, off the event loop
            tokens = embedder.model.tokenizer(texts, truncation=True,
                                              max_length=embedder.model.max_length)
            return self._embed(embedder, texts), sum(len(t) for t in tokens["input_ids"])

        vectors, count = await asyncio.to_thread(run)
        return {"model": embedder.name, "embeddings": vectors.tolist(), "tokens": count}

    def ready(self) -> dict:
        """The loaded index, for /readyz."""
        return {"index": self.name, "chunks": len(self.loaded[0].chunks)}

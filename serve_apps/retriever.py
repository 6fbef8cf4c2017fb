"""Retriever deployment: query embeddings with the index's encoder, top-k chunks from FAISS.

Concurrent queries are embedded and searched together (`@serve.batch`): one encoder forward
and one FAISS batch search per batch. The same encoder answers `/v1/embeddings`.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from llm.index import VectorIndex
from slipway.models.text import Embedder
from slipway.storage import Storage


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.2})
class Retriever:
    """Holds one index and one encoder for the life of the replica."""

    def __init__(self, storage_root: str, index_name: str) -> None:
        self.index = VectorIndex.load(Storage(storage_root), index_name)
        settings = self.index.manifest["settings"]
        self.encoder = settings["encoder"]
        self.embedder = Embedder(self.encoder, settings["max_length"])
        self.name = index_name

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder({"text": np.asarray(texts, dtype=object)})["x"]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _search(self, queries: list[tuple[str, int]]) -> list[list[dict]]:
        def run() -> list[list[dict]]:
            vectors = self._embed([q for q, _ in queries])
            scores, rows = self.index.search(vectors, max(k for _, k in queries))
            chunks = self.index.chunks
            return [[{"chunk_id": int(r), "doc_id": str(chunks["doc_id"].iat[r]),
                      "title": str(chunks["title"].iat[r]), "text": str(chunks["text"].iat[r]),
                      "score": float(s)}
                     for s, r in zip(scores[i][:k], rows[i][:k], strict=True) if r >= 0]
                    for i, (_, k) in enumerate(queries)]

        return await asyncio.to_thread(run)

    async def retrieve(self, query: str, k: int) -> dict:
        """The `k` chunks nearest to `query`, best first, with cosine scores."""
        return {"index": self.name, "chunks": await self._search((query, k))}

    async def embed(self, texts: list[str]) -> dict:
        """Sentence embeddings of `texts` (L2-normalised), the encoder's name and the number
        of tokens it read."""
        vectors = await asyncio.to_thread(self._embed, texts)
        tokens = self.embedder.tokenizer(texts, truncation=True,
                                         max_length=self.embedder.model.max_length)["input_ids"]
        return {"model": self.encoder, "embeddings": vectors.tolist(),
                "tokens": sum(len(t) for t in tokens)}

    def ready(self) -> dict:
        """The loaded index, for /readyz."""
        return {"index": self.name, "chunks": len(self.index.chunks)}

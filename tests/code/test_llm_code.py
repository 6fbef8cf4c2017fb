"""LLM building blocks on inputs whose answers are known: metrics, chunking, prompts, tokens."""

from __future__ import annotations

import os
import shutil
import subprocess

import ninja
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from llm.bootstrap import train_tokenizer
from llm.deepspeed_ops import use_packaged_ninja
from llm.evaluate import exact_match, faithfulness, rouge_l, token_f1
from llm.finetune import OptimSettings, load_deepspeed_json
from llm.index import (
    IndexSettings,
    Shard,
    VectorIndex,
    build_faiss,
    chunk_sentences,
    chunk_words,
    document_hash,
    index_kind,
    merge_results,
    shard_ranges,
)
from llm.instructions import questions, rag_prompt
from llm.lexical_index import build_bm25, reciprocal_rank_fusion, search_bm25
from llm.retrieval_eval import ranking_metrics, read_questions
from llm.tokens import IGNORE, encode_blocks, encode_examples
from slipway.config import ConfigError
from slipway.data.generate import GeneratorConfig, generate


def test_generation_metrics():
    assert exact_match("The Sports.", "sports") == 1.0
    assert exact_match("sports news", "sports") == 0.0
    assert token_f1("striker goal", "the striker goal") == 1.0
    assert token_f1("striker", "striker goal") == pytest.approx(2 / 3)
    assert token_f1("", "goal") == 0.0
    assert rouge_l("the coach behind the season", "the coach behind the season") == 1.0
    assert 0 < rouge_l("coach behind season", "the coach behind the final season") < 1
    assert faithfulness("vaccine study", "A vaccine study was reported.") == 1.0
    assert faithfulness("vaccine telescope", "A vaccine study was reported.") == 0.5
    assert faithfulness("", "anything") == 0.0


def test_metrics_read_every_script_not_only_latin_letters():
    # Before: both answers normalised to nothing, so different answers "matched" exactly.
    assert exact_match("東京です", "大阪です") == 0.0
    assert exact_match("東京です。", "東京です") == 1.0  # punctuation still ignored
    assert token_f1("東京です", "大阪です") == pytest.approx(0.5)  # で, す of 4 characters
    assert rouge_l("東京です", "大阪です") == pytest.approx(0.5)
    assert exact_match("Привет, мир!", "привет мир") == 1.0
    assert exact_match("Привет мир", "Пока мир") == 0.0
    assert faithfulness("Ωmega café", "the ΩMEGA CAFÉ opened") == 1.0


def test_chunks_cover_the_text_with_the_configured_overlap():
    words = [f"w{i}" for i in range(23)]
    chunks = chunk_words(" ".join(words), size=10, overlap=3)
    assert [c.split() for c in chunks] == [words[0:10], words[7:17], words[13:23]]
    assert chunk_words("a b c", size=10, overlap=3) == ["a b c"]
    assert chunk_words("   ", size=10, overlap=3) == []
    with pytest.raises(ValueError, match="overlap_words"):
        IndexSettings(chunk_words=8, overlap_words=8)
    assert document_hash("t", "x") != document_hash("t", "y")


def test_sentence_chunks_keep_sentences_whole_and_overlap_by_whole_sentences():
    s = ["One two three.", "Four five six seven.", "Eight nine.", "Ten eleven twelve?"]
    chunks = chunk_sentences(" ".join(s), size=8, overlap=3)
    # 3 + 4 words fit in 8; the next chunk repeats the last whole sentence (4 words > 3: none
    # fits the overlap, so it starts where the first ended).
    assert chunks == [" ".join(s[:2]), " ".join(s[2:])]
    assert chunk_sentences(" ".join(s), size=8, overlap=4) == [
        " ".join(s[:2]), " ".join(s[1:3]), " ".join(s[2:])]
    long = " ".join(f"w{i}" for i in range(10)) + "."
    assert [len(c.split()) for c in chunk_sentences(long, size=4, overlap=0)] == [4, 4, 2]
    assert chunk_sentences("  ", size=4, overlap=0) == []


def test_bm25_finds_exact_terms_and_fusion_adds_reciprocal_ranks():
    texts = ["the cat sat on the mat", "dogs chase the postman", "cats are listed here",
             "grep prints lines matching a pattern"]
    bm25 = build_bm25(texts)
    scores, rows = search_bm25(bm25, ["listing cats", "zebra"], k=6)
    assert rows[0][0] == 2 and rows.shape == (2, 6)  # stems: listing ~ listed, cats ~ cat
    assert set(rows[0][rows[0] >= 0]) == {0, 2} and (rows[1] == -1).all()
    assert (scores[0][rows[0] >= 0] > 0).all()
    # Only rows the mask allows.
    _, masked = search_bm25(bm25, ["listing cats"], k=2,
                            allowed=np.array([True, True, False, True]))
    assert list(masked[0]) == [0, -1]
    # 1/(60+rank) summed over rankings: row 7 (1st and 2nd) beats row 3 (2nd and missing).
    fused_scores, fused = reciprocal_rank_fusion(
        [np.array([[7, 3, -1]]), np.array([[5, 7, -1]])], k=3)
    assert list(fused[0]) == [7, 5, 3]
    assert fused_scores[0][0] == pytest.approx(1 / 61 + 1 / 62)
    assert fused_scores[0][1] == pytest.approx(1 / 61)


def test_ivfpq_search_reranks_its_candidates_to_the_exact_neighbours():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 64)).astype(np.float32)
    points = centers[rng.integers(0, 20, 4050)] + 0.8 * rng.standard_normal((4050, 64),
                                                                             dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    vectors, queries = points[:4000], points[4000:]
    settings = IndexSettings(hnsw_threshold=1000, approximate="ivfpq", ivf_lists=16, pq_m=8,
                             ivf_nprobe=4, rerank_factor=10)
    texts = [f"chunk {i}" for i in range(4000)]
    index = VectorIndex(shards=[Shard(build_faiss(vectors, settings), 0)], vectors=vectors,
                        chunks=pd.DataFrame({"doc_id": texts, "text": texts}),
                        manifest={"settings": settings.model_dump()}, lexical=build_bm25(texts))
    assert index_kind(index.shards[0].index) == "ivfpq"
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]  # brute force in numpy
    scores, rows = index.search(queries, 10)
    codes_only = index.shards[0].index.search(queries, 10)[1]

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])

    assert recall(rows) >= 0.95 and recall(rows) > recall(codes_only) + 0.2
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, rows, axis=1),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"index.pq_m \(7\) must divide the embedding size"):
        build_faiss(vectors, settings.model_copy(update={"pq_m": 7}))


@pytest.mark.parametrize("exact_filtered", [20_000, 0])  # scored directly; FAISS's ID selector
def test_filtered_search_returns_the_best_among_the_allowed_rows_only(exact_filtered,
                                                                      monkeypatch):
    import llm.index

    monkeypatch.setattr(llm.index, "EXACT_FILTERED", exact_filtered)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"chunk about {w}" for w in rng.choice(["cats", "dogs", "birds"], 300)]
    section = np.where(np.arange(300) % 3 == 0, "a", "b")
    settings = IndexSettings(filter_columns=["section"])
    index = VectorIndex(shards=[Shard(build_faiss(vectors, settings), 0)], vectors=vectors,
                        chunks=pd.DataFrame({"doc_id": [str(i) for i in range(300)],
                                             "text": texts, "section": section}),
                        manifest={"name": "t", "settings": settings.model_dump()},
                        lexical=build_bm25(texts))
    allowed = index.allowed({"section": ["a"]})
    assert allowed.sum() == 100
    queries = vectors[:4] + 0.1
    scores, rows = index.retrieve("dense", ["cats"] * 4, queries, 5, allowed)
    brute = queries @ vectors.T
    brute[:, ~allowed] = -np.inf
    assert (rows == np.argsort(-brute, axis=1)[:, :5]).all()
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    for mode in ("lexical", "hybrid"):
        _, rows = index.retrieve(mode, ["cats"] * 4, queries, 20, allowed)
        assert allowed[rows[rows >= 0]].all() and (rows >= 0).sum() > 0
    # Fewer allowed rows than k: the rest is empty (-1), not rows from elsewhere.
    _, rows = index.retrieve("dense", ["cats"], queries[:1], 5, np.arange(300) < 2)
    assert list(rows[0]) == [*np.argsort(-(queries[0] @ vectors[:2].T)), -1, -1, -1]
    with pytest.raises(ValueError, match=r"filters \['year'\]: index 't' filters on "
                                         r"\['section'\]"):
        index.allowed({"year": ["2024"]})


@pytest.mark.parametrize("exact_filtered", [20_000, 0])  # scored directly; FAISS's ID selector
def test_shards_merged_by_score_answer_as_one_index_does(exact_filtered, monkeypatch):
    import llm.index

    monkeypatch.setattr(llm.index, "EXACT_FILTERED", exact_filtered)
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = IndexSettings(shards=3)
    ranges = shard_ranges(500, 3)
    assert ranges == [(0, 167), (167, 333), (333, 500)]
    texts = [f"chunk {i}" for i in range(500)]
    index = VectorIndex(shards=[Shard(build_faiss(vectors[a:b], settings), a) for a, b in ranges],
                        vectors=vectors, chunks=pd.DataFrame({"doc_id": texts, "text": texts}),
                        manifest={"settings": settings.model_dump()}, lexical=build_bm25(texts))
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    brute = queries @ vectors.T  # numpy over all 500 rows at once
    scores, rows = index.search(queries, 10)
    assert (rows == np.argsort(-brute, axis=1)[:, :10]).all()
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    # Filtered, the mask cut at the shards' bounds: still the best allowed rows of all shards
    # (above EXACT_FILTERED, through each shard's ID selector).
    allowed = np.arange(500) % 4 == 1
    _, rows = index.search(queries, 10, allowed)
    brute[:, ~allowed] = -np.inf
    assert (rows == np.argsort(-brute, axis=1)[:, :10]).all()
    # Fewer rows than k in all: padded with -1 and score 0.
    merged = merge_results([(np.array([[0.5]]), np.array([[7]])),
                            (np.array([[0.9, 0.0]]), np.array([[3, -1]]))], 4)
    assert merged[1].tolist() == [[3, 7, -1, -1]]
    assert merged[0].tolist() == [pytest.approx([0.9, 0.5, 0, 0])]


def test_ranking_metrics_match_scikit_learns_ndcg_and_hand_counts():
    from sklearn.metrics import ndcg_score

    docs = [f"d{i}" for i in range(12)]
    rankings = [docs[:10], ["d3", "d0", "d9", "d1", "d2", "d4", "d5", "d6", "d7", "d8"],
                docs[1:11]]
    relevant = [{"d1", "d4"}, {"d0"}, {"d11"}]
    out = ranking_metrics(rankings, relevant)
    assert out["recall_at_1"] == pytest.approx(0)
    assert out["recall_at_5"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["mrr_at_10"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # scikit-learn's nDCG@10 from scores that order the documents as each ranking does.
    reference = []
    for ranking, rel in zip(rankings, relevant, strict=True):
        truth = [[1.0 if d in rel else 0.0 for d in docs]]
        scores = [[len(docs) - ranking.index(d) if d in ranking else 0.0 for d in docs]]
        reference.append(ndcg_score(truth, scores, k=10))
    assert out["ndcg_at_10"] == pytest.approx(np.mean(reference))


def test_a_questions_file_with_a_bad_line_is_refused_naming_the_line():
    good = '{"question": "how to list files", "relevant": ["ls", 7]}\n\n'
    asked, relevant = read_questions(good, "q.jsonl", {"ls", "7"})
    assert asked == ["how to list files"] and relevant == [{"ls", "7"}]
    with pytest.raises(ValueError, match=r"q.jsonl line 3: relevant: Field required"):
        read_questions(good + '{"question": "where"}', "q.jsonl", {"ls", "7"})
    with pytest.raises(ValueError, match=r"line 1: relevant doc ids \['nope'\] are not in"):
        read_questions('{"question": "x", "relevant": ["nope"]}', "q.jsonl", {"ls"})
    with pytest.raises(ValueError, match=r"line 1: not JSON"):
        read_questions("question, relevant", "q.jsonl", {"ls"})


def test_every_generated_article_yields_answerable_questions():
    articles = generate(GeneratorConfig(num_articles=50, num_users=1, num_events=1)).articles
    for body in articles["body"]:
        pairs = questions(body)
        assert pairs, body
        for question, answer in pairs:
            assert question.endswith("?")
            assert faithfulness(answer, body) == 1.0  # the answer is a span of the article
    prompt = rag_prompt("Why?", ["first passage", "second passage"])
    assert "[1] first passage\n[2] second passage" in prompt


def test_examples_train_on_the_response_only_and_long_ones_are_left_out():
    tokenizer = train_tokenizer(["the coach said the team would win the final"] * 20, 300)
    arrays, too_long = encode_examples(tokenizer, ["Q: who?", "x " * 200], ["coach", "y"], 32)
    assert too_long == 1 and arrays["input_ids"].shape == (1, 32)
    ids, labels, mask = arrays["input_ids"][0], arrays["labels"][0], arrays["attention_mask"][0]
    n = int(mask.sum())
    response = tokenizer(" coach", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[n - 1] == tokenizer.eos_token_id
    assert list(labels[n - 1 - len(response):n]) == [*response, tokenizer.eos_token_id]
    assert (labels[:n - 1 - len(response)] == IGNORE).all() and (labels[n:] == IGNORE).all()
    blocks = encode_blocks(tokenizer, ["the coach said"] * 10, block_size=8)
    assert blocks["input_ids"].shape[1] == 8 and np.array_equal(blocks["labels"],
                                                                blocks["input_ids"])


def test_deepspeed_configs_are_checked(tmp_path):
    for name in ("zero2", "zero3", "zero3_offload"):
        assert load_deepspeed_json(f"configs/deepspeed/{name}.json")["zero_optimization"]
    with pytest.raises(ValidationError, match="optim.deepspeed: .* does not exist"):
        OptimSettings(deepspeed=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 5}}')
    with pytest.raises(ConfigError, match="stage 5"):
        load_deepspeed_json(str(bad))


def test_op_builds_use_deepspeeds_ninja_whatever_path_finds_first(monkeypatch):
    """A process whose PATH finds the system's ninja (or none) builds and checks DeepSpeed's ops
    with the `ninja` package's binary, as `make setup` and the Ray workers do: ninja releases
    hash build commands differently, so a second ninja would rebuild both ops."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    packaged = os.path.join(ninja.BIN_DIR, "ninja")
    use_packaged_ninja()
    use_packaged_ninja()
    assert shutil.which("ninja") == packaged
    assert os.environ["PATH"] == f"{ninja.BIN_DIR}:/usr/bin:/bin"  # once, however often called
    version = subprocess.run(["ninja", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(ninja.__version__)

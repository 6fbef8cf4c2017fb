"""The HTTP API against the app on a local Ray: every route, streaming, the prediction log,
auth and rate limits, and bad input of many kinds answered with a 4xx naming the field."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib
import json
import pkgutil
import re
import time

import faiss
import httpx
import hypothesis
import numpy as np
import pandas as pd
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from llm.base import load_tuned, resolve
from llm.index import Shard, VectorIndex, embed_queries
from serve_apps.client import tour
from slipway.models.hf import load_tokenizer
from slipway.registry import Registry
from slipway.storage import Storage
from tests.serve.conftest import KEYS

QUESTION = "What does the article about markets say?"


def sse(reply: httpx.Response) -> list[dict]:
    events = [line.removeprefix("data: ") for line in reply.text.splitlines()
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_readyz_says_503_and_what_is_missing_until_every_model_is_loaded(startup):
    _, answers = startup
    codes = [a.status_code for a in answers]
    assert codes[-1] == 200 and answers[-1].json()["ready"]
    # The generator's vLLM engine takes longest to start: the app said so before it was ready.
    waiting = [a.json() for a in answers if a.status_code == 503  # (not the proxy's own 503)
               and a.headers.get("content-type", "").startswith("application/json")]
    assert waiting and all(not w["ready"] for w in waiting), codes
    assert "error" in waiting[0]["generator"] and "model" not in waiting[0]["generator"]
    assert codes.index(200) > codes.index(503)


def test_every_route_answers(base_url, platform_root):
    articles = pd.read_parquet(f"{platform_root}/curated/articles")
    ids = articles["article_id"].head(5).tolist()
    answers = tour(base_url, KEYS["tester"], QUESTION, articles["title"].head(3).tolist(),
                   user_id=1, article_ids=ids)
    assert answers["/readyz"]["ready"] and answers["/healthz"]["status"] == "ok"
    assert {m["id"] for m in answers["/v1/models"]["data"]} == {"base_lm", "articles_lora"}
    classify = answers["/v1/classify"]
    assert classify["model"] == "article_topic" and len(classify["predictions"]) == 3
    labels = set(classify["predictions"][0]["probabilities"])
    assert labels == set(articles["topic"]) and \
        abs(sum(classify["predictions"][0]["probabilities"].values()) - 1) < 1e-4
    rank = answers["/v1/rank"]
    scores = [r["score"] for r in rank["ranking"]]
    assert sorted(r["article_id"] for r in rank["ranking"]) == sorted(ids)
    assert scores == sorted(scores, reverse=True) and all(r["features_found"]
                                                         for r in rank["ranking"])
    chunks = answers["/v1/retrieve"]["chunks"]
    assert len(chunks) == 3 and chunks[0]["score"] >= chunks[-1]["score"]
    rag = answers["/v1/rag"]
    assert [c["chunk_id"] for c in rag["citations"]] == [c["chunk_id"] for c in chunks]
    assert rag["model"] == "articles_lora" and rag["usage"]["completion_tokens"] >= 1
    assert answers["/v1/completions"]["choices"][0]["text"]
    assert answers["/v1/chat/completions"]["choices"][0]["message"]["role"] == "assistant"
    embeddings = answers["/v1/embeddings"]["data"]
    assert len(embeddings) == 2 and len(embeddings[0]["embedding"]) == 384


def test_adapter_changes_the_answer_and_matches_transformers_greedy(api, platform_root):
    prompt = {"prompt": "Section:", "max_tokens": 12, "temperature": 0}
    base = api.post("/v1/completions", json={"model": "base_lm", **prompt}).json()
    tuned = api.post("/v1/completions", json={"model": "articles_lora", **prompt}).json()
    again = api.post("/v1/completions", json={"model": "articles_lora", **prompt}).json()
    assert tuned["choices"][0]["text"] == again["choices"][0]["text"]  # greedy repeats
    assert base["version"] == 1 and tuned["version"] == 1
    assert base["usage"]["completion_tokens"] <= 12
    # The reference, computed apart from vLLM: greedy decoding of the same models with
    # transformers (+ PEFT for the adapter) in this process.
    reference = {}
    storage = Storage(platform_root)
    base_path, _ = resolve("registry:base_lm", storage)
    adapter_path, _ = Registry(storage).fetch("articles_lora", "champion")
    tokenizer = load_tokenizer(base_path)
    # The LM was trained on `<bos> text`: the app sends prompts that way, and so does this.
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt["prompt"])["input_ids"]]])
    for name, model in (("base_lm", load_tuned(base_path, None)),
                        ("articles_lora", load_tuned(base_path, adapter_path))):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=12, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        reference[name] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reference["base_lm"] != reference["articles_lora"]  # the adapter changes the answer
    assert base["choices"][0]["text"] == reference["base_lm"]
    assert tuned["choices"][0]["text"] == reference["articles_lora"]


def words(text: str) -> list[str]:
    """Lower-cased word tokens without English articles (the documented support tokens)."""
    return [w for w in re.findall(r"[^\W_]+", text.casefold()) if w not in ("a", "an", "the")]


def test_streaming_completions_and_rag_send_what_the_plain_answer_says(api):
    whole = api.post("/v1/completions", json={"model": "articles_lora", "prompt": QUESTION,
                                              "max_tokens": 10, "temperature": 0}).json()
    reply = api.post("/v1/completions", json={"model": "articles_lora", "prompt": QUESTION,
                                              "max_tokens": 10, "temperature": 0,
                                              "stream": True})
    assert reply.headers["content-type"].startswith("text/event-stream")
    chunks = sse(reply)
    assert len(chunks) > 1  # streamed in pieces, not one event
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]

    rag = api.post("/v1/rag", json={"question": QUESTION, "k": 3}).json()
    streamed = sse(api.post("/v1/rag", json={"question": QUESTION, "k": 3, "stream": True}))
    assert "".join(e["delta"] for e in streamed[1:]).strip() == rag["answer"]
    assert streamed[0]["citations"] == [{k: v for k, v in c.items() if k != "support"}
                                        for c in rag["citations"]]
    # Citations are the retrieved chunks (hybrid search, the app's default), numbered in rank
    # order; support is the share of the answer's words found in the cited chunk.
    retrieved = api.post("/v1/retrieve", json={"query": QUESTION, "k": 3}).json()
    chunks = retrieved["chunks"]
    assert retrieved["mode"] == "hybrid"
    assert [c["number"] for c in rag["citations"]] == [1, 2, 3]
    assert [(c["chunk_id"], c["doc_id"], c["title"]) for c in rag["citations"]] == \
        [(c["chunk_id"], c["doc_id"], c["title"]) for c in chunks]
    answer = words(rag["answer"])
    assert answer, rag
    for citation, chunk in zip(rag["citations"], chunks, strict=True):
        expected = sum(w in set(words(chunk["text"])) for w in answer) / len(answer)
        assert citation["support"] == pytest.approx(expected)


def test_each_retrieval_mode_answers_as_one_unsharded_index_does(api, platform_root):
    # Cosine (dense), BM25 (lexical) and their reciprocal rank fusion (hybrid, the default),
    # computed here from the saved chunks and embeddings with one exact FAISS index over all
    # rows; the app searched the index's two shards through its IndexShard deployments.
    saved = VectorIndex.load(Storage(platform_root), "articles")
    assert len(saved.shards) == 2
    assert api.get("/readyz").json()["retriever"]["shards"] == 2
    flat = faiss.IndexFlatIP(saved.vectors.shape[1])
    flat.add(np.asarray(saved.vectors))
    index = dataclasses.replace(saved, shards=[Shard(flat, 0)])
    vectors = embed_queries([QUESTION], "all-MiniLM-L6-v2", 128)
    default = api.post("/v1/retrieve", json={"query": QUESTION, "k": 3}).json()
    for mode in ("dense", "lexical", "hybrid"):
        served = api.post("/v1/retrieve", json={"query": QUESTION, "k": 3, "mode": mode}).json()
        scores, rows = index.retrieve(mode, [QUESTION], vectors, 3)
        assert served["mode"] == mode
        assert [c["chunk_id"] for c in served["chunks"]] == [r for r in rows[0] if r >= 0]
        assert [c["score"] for c in served["chunks"]] == pytest.approx(
            [s for s, r in zip(scores[0], rows[0], strict=True) if r >= 0], abs=1e-4)
    assert default == served  # hybrid
    bad = api.post("/v1/retrieve", json={"query": QUESTION, "mode": "fuzzy"})
    assert bad.status_code == 422 and "mode" in bad.text
    # Filters on the index's filter_columns: chunks of those topics' articles only.
    articles = pd.read_parquet(f"{platform_root}/curated/articles")
    topics = dict(zip(articles["article_id"].astype(str), articles["topic"], strict=True))
    sports = api.post("/v1/retrieve", json={"query": QUESTION, "k": 10,
                                            "filters": {"topic": ["sports"]}}).json()
    assert len(sports["chunks"]) == 10
    assert {topics[c["doc_id"]] for c in sports["chunks"]} == {"sports"}
    unknown = api.post("/v1/retrieve", json={"query": QUESTION, "filters": {"year": ["2024"]}})
    assert unknown.status_code == 400 and "['year']" in unknown.json()["error"]["message"] \
        and "filter_columns" in unknown.json()["error"]["message"]


def test_a_clients_request_id_is_echoed_and_logged(api, platform_root):
    mine = "client-trace-0042"
    reply = api.post("/v1/classify", json={"texts": ["markets rally"]},
                     headers={"X-Request-ID": mine})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == mine
    logged = wait_logged(platform_root, "v1_classify", {mine})
    assert logged["request_id"].tolist() == [mine]


def test_posted_events_stream_into_the_features_the_ranker_reads(api, platform_root, serve_config):
    from slipway.streaming.consumer import ConsumerSettings, start_consumers, stop_consumers
    from slipway.streaming.stream import StreamSettings, open_stream

    # A user the world has not seen (no other test's traffic, no daily features), on articles
    # it has.
    user = int(pd.read_parquet(f"{platform_root}/curated/users")["user_id"].max()) + 1000
    articles = pd.read_parquet(f"{platform_root}/curated/articles")["article_id"].head(3).tolist()
    events = [{"type": "impression", "user_id": user, "article_id": a} for a in articles]
    events += [{"type": "click", "user_id": user, "article_id": articles[0]},
               {"type": "dwell", "user_id": user, "article_id": articles[0], "value": 42.5}]
    posted = api.post("/v1/events", json={"events": events})
    retried = {"events": [{"type": "click", "user_id": user, "article_id": articles[1],
                           "event_id": "client-click-7"}]}
    assert posted.status_code == 200 and api.post("/v1/events", json=retried).status_code == 200
    assert api.post("/v1/events", json=retried).status_code == 200  # the client's retry

    # On the stream: each event once per post, with the post's X-Request-ID as its id unless the
    # client named it.
    settings = StreamSettings(**serve_config["applications"][0]["args"]["stream"])
    stream = open_stream(settings)
    mine = pd.DataFrame([f for _, f in stream.client.xrange(settings.name)])
    mine = mine[mine["user_id"] == str(user)]
    request_id = posted.headers["x-request-id"]
    assert mine["event_id"].tolist() == [f"{request_id}:{i}" for i in range(5)] + [
        "client-click-7"] * 2
    assert mine["type"].tolist() == [e["type"] for e in events] + ["click", "click"]

    # A consumer group turns them into the user's stream features; the Ranker reads them with
    # the daily ones (in its logged inputs), the retried click counted once.
    consumers = start_consumers(ConsumerSettings(stream=settings, block_ms=100),
                                platform_root, {}, prefix="serve-test")
    deadline = time.monotonic() + 180
    while stream.lag() != {"lag": 0, "pending": 0} and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_consumers(consumers)  # their CPUs back to the tests after this one
    ranked = api.post("/v1/rank", json={"user_id": user, "article_ids": articles})
    assert ranked.status_code == 200
    logged = wait_logged(platform_root, "v1_rank", {ranked.headers["x-request-id"]})
    seen = pd.DataFrame(list(logged["inputs"].iloc[0])).set_index("article_id")
    assert (seen["user_impressions_1h"] == 3).all() and (seen["user_clicks_1h"] == 2).all()
    assert (seen["user_dwell_seconds_1h"] == 42.5).all()
    assert (seen["article_impressions_1h"] >= 1).all()
    assert seen["article_ctr_30d"].notna().all()  # the daily features beside them


def wait_logged(root: str, route: str, ids: set[str], timeout_s: float = 120) -> pd.DataFrame:
    """The prediction-log rows of `ids`, polled until all are written (a generous bound)."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = glob.glob(f"{root}/predictions/{route}/date=*/*.parquet")
        logged = pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame(
            {"request_id": []})
        rows = logged[logged["request_id"].isin(ids)]
        if set(rows["request_id"]) == ids or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_predictions_are_logged_with_request_ids_and_no_keys(api, platform_root):
    ids = [api.post("/v1/classify", json={"texts": ["markets rally"]}).headers["x-request-id"]
           for _ in range(3)]
    rows = wait_logged(platform_root, "v1_classify", set(ids))
    assert len(rows) == 3 and set(rows["model"]) == {"article_topic"}
    assert set(rows["api_key"]) == {"tester"} and (rows["latency_ms"] > 0).all()
    assert list(rows["inputs"].iloc[0]) == ["markets rally"]
    every = glob.glob(f"{platform_root}/predictions/**/*.parquet", recursive=True)
    dump = pd.concat([pd.read_parquet(f) for f in every]).to_csv()
    assert KEYS["tester"] not in dump and KEYS["slow"] not in dump


def test_missing_wrong_and_throttled_keys(base_url):
    body = {"texts": ["hello"]}
    missing = httpx.post(f"{base_url}/v1/classify", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{base_url}/v1/classify", json=body,
                       headers={"Authorization": "Bearer sk-nope"})
    assert wrong.status_code == 403 and "sk-nope" not in wrong.text
    # Auth comes before validation: an anonymous bad body learns nothing about the API.
    assert httpx.post(f"{base_url}/v1/classify", json={"bad": 1}).status_code == 401
    slow = {"Authorization": f"Bearer {KEYS['slow']}"}
    codes = [httpx.post(f"{base_url}/v1/classify", json=body, headers=slow)
             for _ in range(5)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]  # the burst
    assert codes[3].status_code == 429 and int(codes[3].headers["retry-after"]) >= 1
    assert httpx.get(f"{base_url}/healthz").status_code == 200  # no key needed


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/classify", {}, "texts"),
    ("/v1/classify", {"texts": []}, "texts"),
    ("/v1/classify", {"texts": [""]}, "texts.0"),
    ("/v1/classify", {"texts": ["   "]}, "texts"),
    ("/v1/classify", {"texts": "one string"}, "texts"),
    ("/v1/classify", {"texts": ["x" * 4001]}, "texts.0"),
    ("/v1/classify", {"texts": ["ok"] * 65}, "texts"),
    ("/v1/classify", {"texts": ["ok"], "extra": 1}, "extra"),
    ("/v1/rank", {"user_id": -1, "article_ids": [1]}, "user_id"),
    ("/v1/rank", {"user_id": "abc", "article_ids": [1]}, "user_id"),
    ("/v1/rank", {"user_id": True, "article_ids": [1]}, "user_id"),  # not user 1
    ("/v1/rank", {"user_id": 1.0, "article_ids": [1]}, "user_id"),
    ("/v1/rank", {"user_id": 1, "article_ids": ["2"]}, "article_ids.0"),
    ("/v1/rank", {"user_id": 1, "article_ids": [1, 1]}, "article_ids"),
    ("/v1/rank", {"user_id": 1, "article_ids": list(range(201))}, "article_ids"),
    ("/v1/retrieve", {"query": "q", "k": 0}, "k"),
    ("/v1/retrieve", {"query": "q", "k": "5"}, "k"),
    ("/v1/completions", {"model": "base_lm", "prompt": "hi", "stream": "yes"}, "stream"),
    ("/v1/retrieve", {"query": "q", "k": 1000}, "k"),
    ("/v1/rag", {"question": "q", "max_tokens": 100000}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi"}, "model"),
    ("/v1/completions", {"model": "base_lm", "prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"model": "base_lm", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "base_lm", "messages": [{"role": "robot",
                                                                "content": "x"}]},
     "messages.0.role"),
    ("/v1/embeddings", {"input": []}, "input"),
])
def test_invalid_bodies_get_422_naming_the_field(api, path, body, field):
    reply = api.post(path, json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert [f["field"] for f in error["fields"]] == [field], error
    assert error["message"].startswith(f"invalid request: {field}: ")


def test_other_bad_requests_get_4xx_with_the_fix(api):
    assert api.post("/v1/classify", content=b"{not json",
                    headers={"content-type": "application/json"}).status_code == 422
    big = api.post("/v1/classify", content=b"x" * 2_000_000,
                   headers={"content-type": "application/json"})
    assert big.status_code == 413 and "smaller" in big.json()["error"]["message"]
    # The same body in chunks, without a Content-Length: the limit holds on what arrives.
    chunked = api.post("/v1/classify", content=iter([b"x" * 100_000] * 20),
                       headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and "smaller" in chunked.json()["error"]["message"]
    small = api.post("/v1/classify", content=iter([b'{"texts": ', b'["fine"]}']),
                     headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text  # chunked bodies under the limit are served
    # Every 4xx has the app's error shape: a body nested too deep, an unknown route or method.
    deep = api.post("/v1/classify", content=b"[" * 100_000 + b"]" * 100_000,
                    headers={"content-type": "application/json"})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    assert api.get("/v1/nowhere").json()["error"]["code"] == 404
    assert api.get("/v1/classify").json()["error"]["code"] == 405
    unknown = api.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert unknown.status_code == 404 and "base_lm" in unknown.json()["error"]["message"]
    long = api.post("/v1/completions", json={"model": "base_lm", "prompt": "word " * 1500,
                                             "max_tokens": 16})
    assert long.status_code == 400 and "max_tokens" in long.json()["error"]["message"]
    emoji = api.post("/v1/classify", json={"texts": ["📈 市场 上涨 \u0000 ok"]})
    assert emoji.status_code == 200


def preload(package) -> None:
    """Import every module of a fuzzing plugin now, at collection. schemathesis and hypothesis are
    pytest plugins, so pytest rewrites each of their modules as it is first imported, parsing its
    source; on CPython 3.11 such a parse can fail when it overlaps another one (`SystemError: AST
    constructor recursion depth mismatch`, gh-106905), which the fuzz test's lazy imports
    (schemathesis' own, then hypothesis' `randoms()` strategy) did mid-session."""
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}.",
                                        onerror=lambda name: None):
        if ".extra." in module.name:  # optional integrations (allure, django, ...), never used
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(module.name)


preload(schemathesis)
preload(hypothesis)


def test_fuzzed_requests_from_the_openapi_spec_never_get_a_5xx(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {KEYS['tester']}"}
    failures, calls = [], []
    # Valid and invalid bodies for the fast routes; invalid ones only where a valid body
    # would run the generator.
    plan = [(p, m) for p in ("/v1/classify", "/v1/rank", "/v1/retrieve", "/v1/embeddings")
            for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    plan += [(p, GenerationMode.NEGATIVE) for p in ("/v1/rag", "/v1/completions",
                                                    "/v1/chat/completions")]
    for path, mode in plan:
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema[path]["POST"].as_strategy(generation_mode=mode))
        def fuzz(case):
            reply = case.call(headers=headers, timeout=60)
            calls.append(reply.status_code)
            if reply.status_code >= 500:
                failures.append((case.path, case.body, reply.status_code, reply.text[:200]))

        fuzz()
    assert not failures, failures[:5]
    assert len(calls) >= 100 and any(c == 422 for c in calls) and any(c == 200 for c in calls)

"""Serving building blocks without Ray: API keys, rate buckets, request limits, the
prediction log writer."""

from __future__ import annotations

import asyncio
import glob

import pandas as pd
import pytest
import torch
from fastapi import HTTPException
from pydantic import ValidationError

from serve_apps.auth import Bucket, Gate, load_keys
from serve_apps.cache import AnswerCache
from serve_apps.prediction_log import PredictionLog
from serve_apps.schemas import ClassifyRequest, CompletionRequest, RankRequest
from serve_apps.settings import AppSettings, AuthSettings, LoggingSettings
from serve_apps.versions import Versions
from slipway.registry import Registry
from slipway.storage import Storage
from tests.code.test_registry import TinyNet

LABELED = [{"label": "a", "probabilities": {"a": 0.75, "b": 0.25}}]  # a one-text classify answer


def test_keys_come_from_the_environment_and_a_secrets_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEYS", "web=sk-1, batch=sk-2")
    secrets = tmp_path / "keys.yaml"
    secrets.write_text("keys:\n  - {name: ops, key: sk-3, rate_per_minute: 5, burst: 2}\n")
    keys = load_keys(AuthSettings(keys_env="TEST_KEYS", keys_file=str(secrets)))
    assert [(k.name, k.rate_per_minute, k.burst) for k in keys] == [
        ("web", 600.0, 60), ("batch", 600.0, 60), ("ops", 5.0, 2)]
    assert all(b"sk-" not in k.digest for k in keys)
    monkeypatch.setenv("TEST_KEYS", "web=sk-1,oops")
    with pytest.raises(ValueError, match="TEST_KEYS entry 2 is not name=key"):
        load_keys(AuthSettings(keys_env="TEST_KEYS"))
    monkeypatch.setenv("TEST_KEYS", "")
    with pytest.raises(ValueError, match="no API keys were found: set TEST_KEYS"):
        Gate(AuthSettings(keys_env="TEST_KEYS"))


class Clock:
    """A clock the test moves by hand: rate limits without waiting or timing noise."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gate_answers_401_403_and_429_with_retry_after(monkeypatch):
    monkeypatch.setenv("TEST_KEYS", "web=sk-1")
    clock = Clock()
    gate = Gate(AuthSettings(keys_env="TEST_KEYS", rate_per_minute=30, burst=2), clock=clock)
    for header, status in ((None, 401), ("Basic abc", 401), ("Bearer sk-2", 403)):
        with pytest.raises(HTTPException) as err:
            gate.check(header)
        assert err.value.status_code == status
    assert gate.check("Bearer sk-1") == gate.check("bearer sk-1") == "web"  # the burst
    clock.now += 0.5  # 30/min is a token per 2 s: 1.5 s still to wait, rounded up
    with pytest.raises(HTTPException) as err:
        gate.check("Bearer sk-1")
    assert err.value.status_code == 429 and err.value.headers["Retry-After"] == "2"
    clock.now += 1.5
    assert gate.check("Bearer sk-1") == "web"


def test_bucket_refills_at_its_rate_up_to_its_capacity():
    clock = Clock()
    bucket = Bucket(rate=4.0, capacity=2, tokens=1, clock=clock)
    assert bucket.take() == 0.0
    assert bucket.take() == 0.25  # empty: one token in 1/rate seconds
    clock.now += 0.125
    assert bucket.take() == 0.125
    clock.now += 0.125
    assert bucket.take() == 0.0
    clock.now += 60  # a long pause refills only up to the capacity
    assert [bucket.take() for _ in range(3)][:2] == [0.0, 0.0] and bucket.tokens < 1


def test_request_limits_name_the_field():
    with pytest.raises(ValidationError, match="texts"):
        ClassifyRequest(texts=["ok"] * 65)
    with pytest.raises(ValidationError, match="non-whitespace"):
        ClassifyRequest(texts=["\n\t "])
    with pytest.raises(ValidationError, match="unique"):
        RankRequest(user_id=1, article_ids=[3, 3])
    with pytest.raises(ValidationError, match="at most 4 stop"):
        CompletionRequest(model="m", prompt="p", stop=["a", "b", "c", "d", "e"])
    assert CompletionRequest(model="m", prompt="p", stop="\n", user="x").stop == ["\n"]
    with pytest.raises(ValidationError, match="unknown key|Extra inputs"):
        AppSettings.model_validate({"storag_root": "x"})


def test_prediction_log_batches_rows_into_parquet_per_route_and_day(tmp_path):
    storage = Storage(str(tmp_path / "root"))

    async def scenario() -> PredictionLog:
        log = PredictionLog(storage, LoggingSettings(flush_rows=3, flush_interval_s=60))
        for i in range(4):
            log.record(f"r{i}", "/v1/classify", "web", "topic", 2, ["text"], LABELED, 5.0)
            if i == 2:  # the third row starts a flush, which runs off the request path
                assert log.written == 0
                for _ in range(600):  # poll (up to a generous 60 s) for the background flush
                    if log.written:
                        break
                    await asyncio.sleep(0.1)
                assert log.written == 3 and not log.rows
        assert len(log.rows) == 1  # below flush_rows: waits for the timer or close()
        log.record("r9", "/v1/rank", "web", "engagement", 1, [{"user_id": 1, "article_id": 2}],
                   [{"article_id": 2, "score": 0.5, "features_found": False}], 7.0)
        await log.close()
        return log

    log = asyncio.run(scenario())
    assert log.written == 5
    classify = pd.concat(pd.read_parquet(f) for f in
                         glob.glob(f"{tmp_path}/root/predictions/v1_classify/date=*/*.parquet"))
    assert sorted(classify["request_id"]) == ["r0", "r1", "r2", "r3"]
    assert classify["model_version"].iloc[0] == "2"
    assert list(classify["output"].iloc[0]) == [{"label": "a",
                                                 "probabilities": [("a", 0.75), ("b", 0.25)]}]
    rank = glob.glob(f"{tmp_path}/root/predictions/v1_rank/date=*/*.parquet")
    assert len(rank) == 1


def test_prediction_log_holds_at_most_its_bound_while_storage_is_down_then_catches_up(tmp_path):
    """Storage unreachable (the root is a file, so every write fails): rows wait up to the bound,
    the oldest beyond it are dropped and counted; once storage is back the rest are written."""
    blocked = tmp_path / "root"
    blocked.write_text("not a folder")
    storage = Storage(str(blocked))

    async def scenario() -> None:
        log = PredictionLog(storage, LoggingSettings(flush_rows=1000, flush_interval_s=60,
                                                     max_buffered_rows=50))
        for i in range(120):
            log.record(f"r{i}", "/v1/classify", "web", "topic", 2, ["t"], LABELED, 1.0)
            if i % 40 == 39:
                assert await log.flush() == 0  # storage down: nothing written, rows kept
        assert len(log.rows) == 50 and log.dropped == 70
        blocked.unlink()  # storage is back
        assert await log.flush() == 50
        await log.close()

    asyncio.run(scenario())
    written = pd.concat(pd.read_parquet(f) for f in
                        glob.glob(f"{blocked}/predictions/v1_classify/date=*/*.parquet"))
    # The newest 50 survive, in order; the 70 oldest were the ones dropped.
    assert list(written.sort_values("timestamp", kind="stable")["request_id"]) == \
        [f"r{i}" for i in range(70, 120)]


def test_compaction_merges_a_finished_days_files_and_readers_see_each_row_once(tmp_path):
    from datetime import date, datetime, timezone

    from slipway.predictions import compact, log_row, read_log, write_rows

    storage = Storage(str(tmp_path))
    days = [datetime(2026, 3, d, 12, tzinfo=timezone.utc) for d in (1, 2)]
    def ranked(i: int) -> tuple[list[dict], list[dict]]:
        return ([{"user_id": 1, "article_id": i, "user_ctr_7d": i / 10}],
                [{"article_id": i, "score": i / 10, "features_found": True}])

    for i in range(6):  # six flushes a day: six small files per day
        write_rows(storage, [log_row(f"r{d.day}-{i}", d.replace(minute=i), "/v1/rank", "web",
                                     "engagement", 1, *ranked(i), 2.0) for d in days], "w")
    before = read_log(storage, "/v1/rank")

    def files(day: str) -> list[str]:
        return glob.glob(f"{tmp_path}/predictions/v1_rank/date={day}/*.parquet")

    assert len(files("2026-03-01")) == len(files("2026-03-02")) == 6
    assert compact(storage, "/v1/rank", before=date(2026, 3, 2)) == 6  # day 2 is not finished
    assert (len(files("2026-03-01")), len(files("2026-03-02"))) == (1, 6)
    after = read_log(storage, "/v1/rank")
    assert before.num_rows == 12 and after.equals(before)
    # A reader that sees the merged file and a part not yet removed still counts each row once.
    write_rows(storage, [log_row("r1-0", days[0], "/v1/rank", "web", "engagement", 1, *ranked(0),
                                 2.0)], "w")
    assert len(read_log(storage, "/v1/rank")) == len(before)
    assert compact(storage, "/v1/rank", before=date(2026, 3, 2)) == 2


def test_the_monitor_reads_typed_log_columns_item_by_item(tmp_path):
    """Rank and classify answers are stored as typed columns and flatten to one row per scored
    item, each with its own features and prediction, as the answers themselves give them."""
    from datetime import datetime, timezone

    from slipway.predictions import flatten, log_row, read_log, write_rows

    storage = Storage(str(tmp_path))
    at = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    ranked = [[(7, 0.2, None), (3, 0.9, 0.5)], [(5, 0.4, 0.1)]]  # (article, score, ctr) per item
    write_rows(storage, [log_row(
        f"q{n}", at.replace(minute=n), "/v1/rank", "web", "engagement", 4,
        [{"user_id": 10 + n, "article_id": a, "user_ctr_7d": ctr} for a, _, ctr in items],
        # the answer lists the best first: a different order from the inputs
        sorted(({"article_id": a, "score": s, "features_found": ctr is not None}
                for a, s, ctr in items), key=lambda r: -r["score"]), 3.0)
        for n, items in enumerate(ranked)], "w")
    texts = [["a b", "c"], ["d"]]
    probs = [[{"x": 0.6, "y": 0.4}, {"x": 0.1, "y": 0.9}], [{"x": 0.7, "y": 0.3}]]
    write_rows(storage, [log_row(
        f"c{n}", at.replace(minute=n), "/v1/classify", "web", "topic", 2, texts[n],
        [{"label": max(p, key=p.get), "probabilities": p} for p in probs[n]], 1.0)
        for n in range(2)], "w")
    rank = flatten(read_log(storage, "/v1/rank"), "/v1/rank")
    assert rank[["request_id", "user_id", "article_id", "prediction"]].values.tolist() == [
        ["q0", 10, 7, 0.2], ["q0", 10, 3, 0.9], ["q1", 11, 5, 0.4]]
    assert rank["user_ctr_7d"].isna().tolist() == [True, False, False]
    assert rank["model_version"].tolist() == ["4"] * 3
    classify = flatten(read_log(storage, "/v1/classify"), "/v1/classify")
    assert classify[["request_id", "position", "text", "prediction", "confidence"]
                    ].values.tolist() == [["c0", 0, "a b", "x", 0.6], ["c0", 1, "c", "y", 0.9],
                                          ["c1", 0, "d", "x", 0.7]]


def test_versions_follow_a_moved_alias_keep_numbers_and_evict_the_least_recently_used(tmp_path):
    registry = Registry(Storage(str(tmp_path)))
    nets = [TinyNet(2) for _ in range(5)]
    for net in nets:
        registry.register("m", net.state_dict(), "TinyNet", {"width": 2})
    registry.set_alias("m", "champion", 1)
    versions = Versions(registry, "m", capacity=3)

    def weight(ref=None):
        return versions.get(ref)[0].layer.weight

    assert torch.equal(weight(), nets[0].layer.weight)
    assert torch.equal(weight(4), nets[3].layer.weight) and versions.get(4)[1].version == 4
    registry.set_alias("m", "champion", 2)
    versions.refresh()  # the alias moved: reloaded; a number never moves
    assert torch.equal(weight(), nets[1].layer.weight) and versions.get(4)[1].version == 4
    weight(3)
    weight(4)  # 3 is now the least recently used non-default reference
    weight(5)
    assert set(versions.loaded) == {"champion", 4, 5}  # the default is never evicted
    assert torch.equal(weight(3), nets[2].layer.weight)  # loaded again when asked


def test_answer_cache_keys_by_version_and_normalized_text_evicts_lru_and_expires():
    now = [0.0]
    cache = AnswerCache(max_entries=2, ttl_s=60, timer=lambda: now[0])
    cache.put("topic", 1, ["Stocks  rally", "Cafe\u0301 opens"], ["a", "b"])
    # Whitespace runs and Unicode composition do not make a new input; a version does.
    assert cache.get("topic", 1, [" Stocks rally ", "Caf\u00e9 opens", "other"]) == ["a", "b",
                                                                                    None]
    assert cache.get("topic", 2, ["Stocks rally"]) == [None]
    assert cache.get("other", 1, ["Stocks rally"]) == [None]
    # Least recently used goes first: "Stocks rally" was read last, so "Cafe opens" makes room.
    cache.get("topic", 1, ["Stocks rally"])
    cache.put("topic", 1, ["third"], ["c"])
    assert cache.get("topic", 1, ["Stocks rally", "Caf\u00e9 opens", "third"]) == ["a", None,
                                                                                  "c"]
    now[0] = 61.0  # past the time to live: nothing is served
    assert cache.get("topic", 1, ["Stocks rally", "third"]) == [None, None]
    off = AnswerCache(max_entries=0, ttl_s=60)
    off.put("topic", 1, ["x"], ["a"])
    assert off.get("topic", 1, ["x"]) == [None]

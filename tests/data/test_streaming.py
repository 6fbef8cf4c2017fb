"""Stream features end to end: events on a real Redis stream, the Ray consumer group, Feast's
online store and point-in-time training sets, each checked against a brute-force count of the
distinct events sent."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
import ray

from slipway.features.columns import STREAM_COLUMNS
from slipway.features.store import (
    FeatureStoreSettings,
    apply_definitions,
    as_of,
    online_features,
    open_store,
)
from slipway.storage import Storage
from slipway.streaming.consumer import ConsumerSettings, start_consumers, stop_consumers
from slipway.streaming.events import StreamEvent, decode
from slipway.streaming.stream import StreamSettings, open_stream
from slipway.streaming.windows import WindowState

pytestmark = pytest.mark.usefixtures("ray_session")
HOUR_MS = 3_600_000


def reference(events: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Each entity's stream features as of its newest event, counted by brute force over the
    distinct events (the definitions in slipway/streaming/windows.py, written out again)."""
    key = f"{kind}_id"
    counted = events[events["type"].isin(["impression", "click", "dwell"])
                     & events[key].notna()].drop_duplicates("event_id")
    rows = []
    for entity, group in counted.groupby(key):
        end = group["ts_ms"].max()

        def within(event_type: str, ms: int, g: pd.DataFrame = group, end: int = end
                   ) -> pd.DataFrame:
            return g[(g["type"] == event_type) & (g["ts_ms"] > end - ms)]

        row = {key: int(entity)}
        for suffix, ms in (("15m", 900_000), ("1h", HOUR_MS)):
            row[f"{kind}_impressions_{suffix}"] = len(within("impression", ms))
            row[f"{kind}_clicks_{suffix}"] = len(within("click", ms))
        row[f"{kind}_ctr_1h"] = (row[f"{kind}_clicks_1h"] + 1) / (row[f"{kind}_impressions_1h"] + 5)
        row[f"{kind}_dwell_seconds_1h"] = float(within("dwell", HOUR_MS)["value"].sum())
        clicks = within("click", HOUR_MS)
        row[f"{kind}_seconds_since_last_click"] = (
            (end - clicks["ts_ms"].max()) / 1000 if len(clicks) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index(key).sort_index()


def stream_features(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """A frame's stream columns of one kind, by entity, as floats (nulls as NaN)."""
    names = [f.name for f in STREAM_COLUMNS[f"{kind}_stream"]]
    return (frame.drop_duplicates(f"{kind}_id").set_index(f"{kind}_id")[names]
            .astype("float64").sort_index())


def frame(events: list[StreamEvent]) -> pd.DataFrame:
    return pd.DataFrame([e.model_dump() for e in events])


def wait_until_done(stream, consumers, sent: int, bound_s: float = 180.0) -> dict:
    """Poll until the group has acknowledged everything and the consumers have handled `sent`
    entries between them."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        stats = ray.get([c.stats.remote() for c in consumers])
        lag = stream.lag()
        if lag == {"lag": 0, "pending": 0} and \
                sum(s["processed"] + s["dead_lettered"] for s in stats) >= sent:
            return {"stats": stats, **lag}
        time.sleep(0.2)
    raise AssertionError(f"the consumers did not finish {sent} entries in {bound_s} s: "
                         f"{stream.lag()}, {stats}")


def setup(root: str, redis_url: str, name: str, **consumer: object):
    storage = Storage(root)
    settings = FeatureStoreSettings()
    store = open_store(settings, storage)
    apply_definitions(store, storage)
    cfg = ConsumerSettings(stream=StreamSettings(url=f"redis://{redis_url}", name=name),
                           block_ms=100, **consumer)
    return store, cfg, open_stream(cfg.stream), settings.model_dump()


@pytest.fixture
def started() -> Iterator[Callable[..., list]]:
    """`start_consumers` for one test: what it started is stopped after the test, passed or
    failed, so their CPUs go back to the tests after it."""
    groups: list[list] = []

    def start(*args, **kwargs) -> list:
        groups.append(start_consumers(*args, **kwargs))
        return groups[-1]

    yield start
    for consumers in groups:
        stop_consumers(consumers)


def test_streamed_events_become_online_and_point_in_time_features_equal_to_a_brute_force_count(
        root, redis_url, started):
    store, cfg, stream, feature_store = setup(root, redis_url, "test:events")
    rng = random.Random(0)
    base = int(time.time() * 1000) - 3 * HOUR_MS
    events: list[StreamEvent] = []
    for k in range(80):  # strictly increasing times over about 2.2 hours
        user = rng.choice([1, 2, 3, None])
        article = rng.choice([10, 11, 12, 13])
        kind = rng.choices(["impression", "click", "dwell", "conversion"], [6, 3, 2, 1])[0]
        events.append(StreamEvent(event_id=uuid.uuid4().hex, type=kind, user_id=user,
                                  article_id=article, ts_ms=base + 97_000 * k,
                                  value=round(rng.uniform(1, 90), 2) if kind == "dwell" else 1))
    first, second = events[:50], events[50:]
    retried = rng.sample(events, 10)  # published twice: the same event ids
    malformed = [{"type": "click", "ts_ms": str(base)},  # no event_id
                 {"event_id": "e1", "type": "view", "ts_ms": str(base)},
                 {"event_id": "e2", "type": "click", "user_id": "abc", "ts_ms": str(base)}]

    consumers = started(cfg, root, feature_store)
    stream.publish(first)
    for fields in malformed:
        stream.client.xadd(cfg.stream.name, fields)
    wait_until_done(stream, consumers, len(first) + len(malformed))
    stream.publish(second + retried)
    done = wait_until_done(stream, consumers, len(events) + len(retried) + len(malformed))
    assert sum(s["processed"] for s in done["stats"]) == len(events) + len(retried)

    # Malformed entries are dead-lettered once each, with a reason naming the field.
    dead = stream.client.xrange(cfg.stream.dead_letters)
    assert [d["reason"].split(":")[0] for _, d in dead] == ["event_id", "type", "user_id"]
    assert sum(s["dead_lettered"] for s in done["stats"]) == 3

    # Online: what the Ranker reads (the `ranking` service) equals the brute force, retried
    # events counted once.
    everything = frame(events)
    for kind, ids in (("user", [1, 2, 3]), ("article", [10, 11, 12, 13])):
        rows = [{"user_id": 1, "article_id": i} if kind == "article" else
                {"user_id": i, "article_id": 10} for i in ids]
        got = stream_features(online_features(store, rows, service="ranking"), kind)
        pd.testing.assert_frame_equal(got, reference(everything, kind).astype("float64"),
                                      check_names=False)

    # Offline, point in time: before any event nothing; between the two batches of events the
    # first batch's counts (nothing of the second leaks in); after them all of them; two hours
    # after a user's newest event nothing (the views' TTL is their longest window).
    def at(ms: int) -> pd.Timestamp:
        return pd.Timestamp(ms, unit="ms", tz="UTC")

    users = [1, 2, 3]
    expected_first = reference(frame(first), "user").astype("float64")
    expected_all = reference(everything, "user").astype("float64")
    between = first[-1].ts_ms + 1
    newest = {u: everything[everything["user_id"] == u]["ts_ms"].max() for u in users}
    moments = ([("before", u, base - 1) for u in users]
               + [("between", u, between) for u in users]
               + [("after", u, everything["ts_ms"].max() + 1) for u in users]
               + [("expired", u, newest[u] + 2 * HOUR_MS) for u in users])
    rows = pd.DataFrame({"user_id": [u for _, u, _ in moments],
                         "event_timestamp": [at(ms) for _, _, ms in moments]})
    names = [f.name for f in STREAM_COLUMNS["user_stream"]]
    got = as_of(store, rows, [f"user_stream:{n}" for n in names])
    assert len(got) == len(rows)  # no row dropped, whatever the store holds
    for (when, user, _), (_, row) in zip(moments, got.iterrows(), strict=True):
        values = row[names].astype("float64")
        if when in ("before", "expired"):
            assert values.isna().all(), (when, user)
            continue
        expected = (expected_first if when == "between" else expected_all).loc[user]
        pd.testing.assert_series_equal(values, expected[names], check_names=False)


def test_a_consumer_dying_mid_batch_loses_and_double_counts_nothing(root, redis_url, started):
    store, cfg, stream, feature_store = setup(root, redis_url, "test:kill", consumers=2,
                                              batch_size=50, claim_idle_ms=1000)
    rng = random.Random(1)
    start = int(time.time() * 1000)
    events = [StreamEvent(event_id=f"k{k}", type=rng.choice(["impression", "click"]),
                          user_id=100 + rng.randrange(40), article_id=200 + rng.randrange(15),
                          ts_ms=start + k) for k in range(2500)]
    retried = rng.sample(events, 250)

    # A consumer that was given 100 entries and died after counting half of them, before it
    # acknowledged any: its successors must claim them and count none twice.
    stream.publish(events[:500])
    ghost = stream.client.xreadgroup(cfg.stream.group, "ghost", {cfg.stream.name: ">"},
                                     count=100)
    taken = [decode(fields) for _, fields in ghost[0][1]]
    WindowState(stream.client, f"{cfg.stream.name}:windows").record(taken[:50])

    consumers = started(cfg, root, feature_store, prefix="kill")
    stream.publish(events[500:1500] + retried[:100])
    # Kill a live consumer while the group still has entries in flight; Ray restarts it under
    # its name, and it finishes what it was given first.
    while sum(s["processed"] for s in ray.get([c.stats.remote() for c in consumers])) < 200:
        time.sleep(0.05)
    stream.publish(events[1500:] + retried[100:])  # in flight whatever the consumers' pace
    in_flight = stream.lag()
    ray.kill(consumers[0], no_restart=False)
    done = wait_until_done(stream, consumers, 0)
    assert in_flight["lag"] + in_flight["pending"] > 0
    assert stream.client.xpending(cfg.stream.name, cfg.stream.group)["pending"] == 0
    assert done["lag"] == 0

    everything = frame(events)
    for kind, ids in (("user", range(100, 140)), ("article", range(200, 215))):
        rows = [{"user_id": i, "article_id": 200} if kind == "user" else
                {"user_id": 100, "article_id": i} for i in ids]
        got = stream_features(online_features(store, rows, service="ranking"), kind)
        want = reference(everything, kind).astype("float64")
        pd.testing.assert_frame_equal(got.loc[want.index], want, check_names=False)
        assert got[f"{kind}_impressions_1h"].sum() == (everything["type"] == "impression").sum()

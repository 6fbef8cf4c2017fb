"""Window state of the stream features, kept in Redis, and the features read from it.

Each entity (user or article) and event type has a sorted set whose members are event ids and
whose scores are event times. Adding an event twice (a redelivered or reclaimed entry, a retried
publish) leaves the set as it was, so every update is idempotent, keyed by event id: a consumer
can die anywhere between reading and acknowledging and its successor recounts nothing. Dwell
members also carry the seconds (`<event_id>|<seconds>`).

An entity's features are as of its newest event (`T`, the row's `event_timestamp`): impressions
and clicks in the 15 minutes and the hour up to `T`, smoothed hour click-through rate (the daily
views' prior), dwell seconds in the hour and seconds from the last click to `T` (none within the
hour: null). Events older than the hour before `T` are trimmed; an idle entity's sets expire.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import redis

from slipway.features.columns import STREAM_WINDOWS_S
from slipway.features.compute import CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, KINDS
from slipway.streaming.events import COUNTED, StreamEvent

RETENTION_MS = 1000 * max(STREAM_WINDOWS_S.values())
IDLE_EXPIRY_S = 2 * RETENTION_MS // 1000

# One entity's sets (KEYS: impressions, clicks, dwell) read server-side in one call: its newest
# event time, then after trimming what is older than the retention (ARGV[1] ms) and renewing
# the expiry (ARGV[2] s), impressions and clicks per window (ARGV[3..] ms), the dwell members of
# the retention and the last click with its time.
READ_SCRIPT = """
local newest = 0
for i = 1, 3 do
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  if #last > 0 and tonumber(last[2]) > newest then newest = tonumber(last[2]) end
end
local out = {newest}
for i = 1, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', newest - tonumber(ARGV[1]))
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
for j = 3, #ARGV do
  local from = '(' .. string.format('%d', newest - tonumber(ARGV[j]))
  table.insert(out, redis.call('ZCOUNT', KEYS[1], from, newest))
  table.insert(out, redis.call('ZCOUNT', KEYS[2], from, newest))
end
local start = '(' .. string.format('%d', newest - tonumber(ARGV[1]))
table.insert(out, redis.call('ZRANGEBYSCORE', KEYS[3], start, newest))
table.insert(out, redis.call('ZREVRANGEBYSCORE', KEYS[2], newest, '-inf', 'WITHSCORES',
                             'LIMIT', 0, 1))
return out
"""


class WindowState:
    """The per-entity event sets under `prefix` in one Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._read = client.register_script(READ_SCRIPT)

    def _key(self, kind: str, entity: int, event_type: str) -> str:
        return f"{self.prefix}:{kind}:{entity}:{event_type}"

    def record(self, events: Iterable[StreamEvent]) -> dict[str, list[int]]:
        """Add counted events to their user's and article's sets (one round trip); the
        entities touched, by kind."""
        pipe = self.client.pipeline(transaction=False)
        touched: dict[str, set[int]] = defaultdict(set)
        for event in events:
            if event.type not in COUNTED:
                continue
            member = event.event_id
            if event.type == "dwell":
                member = f"{member}|{event.value!r}"
            for kind, key in KINDS.items():
                entity = getattr(event, key)
                if entity is not None:
                    pipe.zadd(self._key(kind, entity, event.type), {member: event.ts_ms})
                    touched[kind].add(entity)
        pipe.execute()
        return {kind: sorted(ids) for kind, ids in touched.items()}

    def features(self, kind: str, entities: list[int]) -> pa.Table:
        """Each entity's features as of its newest event (one script call per entity, all in
        one round trip)."""
        if not entities:
            return pa.table({KINDS[kind]: pa.array([], pa.int64())})
        pipe = self.client.pipeline(transaction=False)
        windows_ms = [1000 * seconds for seconds in STREAM_WINDOWS_S.values()]
        for entity in entities:
            self._read(keys=[self._key(kind, entity, t) for t in COUNTED],
                       args=[RETENTION_MS, IDLE_EXPIRY_S, *windows_ms], client=pipe)
        replies = pipe.execute()
        ends = [int(reply[0]) for reply in replies]

        columns: dict[str, list] = defaultdict(list)
        for reply, end in zip(replies, ends, strict=True):
            counts, dwell, last_click = reply[1:-2], reply[-2], reply[-1]
            for j, suffix in enumerate(STREAM_WINDOWS_S):
                columns[f"{kind}_impressions_{suffix}"].append(counts[2 * j])
                columns[f"{kind}_clicks_{suffix}"].append(counts[2 * j + 1])
            columns[f"{kind}_ctr_1h"].append(
                (columns[f"{kind}_clicks_1h"][-1] + CTR_PRIOR_CLICKS)
                / (columns[f"{kind}_impressions_1h"][-1] + CTR_PRIOR_IMPRESSIONS))
            columns[f"{kind}_dwell_seconds_1h"].append(
                float(sum(float(m.rsplit("|", 1)[1]) for m in dwell)))
            columns[f"{kind}_seconds_since_last_click"].append(
                (end - float(last_click[1])) / 1000 if last_click else None)
        return pa.table({
            KINDS[kind]: pa.array(entities, pa.int64()),
            "event_timestamp": pa.array(np.array(ends, dtype="datetime64[ms]"),
                                        pa.timestamp("ms", tz="UTC")),
            "created": pa.array(np.full(len(ends), np.datetime64(time.time_ns() // 1000, "us")),
                                pa.timestamp("us", tz="UTC")),
            **columns})

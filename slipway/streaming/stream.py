"""The event stream: Redis Streams with a consumer group, behind a small protocol.

`EventStream` is the seam: the consumer only publishes, reads (its own unacknowledged entries
first, then new ones), claims entries another consumer left unacknowledged, acknowledges,
dead-letters and asks for lag. `RedisStream` implements it on Redis Streams; a Kafka stream would
implement the same five calls (a consumer group's committed offsets playing the acknowledgements).
"""

from __future__ import annotations

import json
from typing import Literal, Protocol

import redis
import redis.asyncio
from pydantic import Field

from slipway.config import StrictModel
from slipway.streaming.events import StreamEvent, encode

Entry = tuple[str, dict[str, str]]
"""A stream entry: its id and its fields."""


class StreamSettings(StrictModel):
    """Which stream carries the outcome events, and how long it may grow."""

    kind: Literal["redis"] = "redis"
    url: str = Field(default="redis://127.0.0.1:6379", description="redis://host:port[/db]")
    name: str = Field(default="slipway:events", pattern=r"^[A-Za-z0-9_:.-]+$")
    group: str = Field(default="features", pattern=r"^[A-Za-z0-9_:.-]+$",
                       description="the consumer group whose consumers share the stream")
    max_length: int = Field(
        default=1_000_000, ge=1000, description="entries kept (trimmed approximately on publish; "
        "entries not yet read by the group are lost past it, so size it for the longest outage)")

    @property
    def dead_letters(self) -> str:
        """The stream malformed entries go to, each with the reason."""
        return f"{self.name}:dead"


class EventStream(Protocol):
    """What producers and the feature consumer need of a stream."""

    def publish(self, events: list[StreamEvent]) -> list[str]: ...
    def read(self, consumer: str, count: int, block_ms: int, pending: bool) -> list[Entry]: ...
    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]: ...
    def ack(self, ids: list[str]) -> None: ...
    def dead_letter(self, rejected: list[tuple[Entry, str]]) -> None: ...
    def lag(self) -> dict[str, int]: ...


def _xadd(settings: StreamSettings, event: StreamEvent) -> tuple[tuple, dict]:
    """XADD's arguments for one event (approximate trimming keeps it O(1))."""
    return (settings.name, encode(event)), {"maxlen": settings.max_length, "approximate": True}


class RedisStream:
    """`EventStream` on a Redis stream and consumer group (created on first use)."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.url, decode_responses=True,
                                           socket_timeout=30, health_check_interval=30)

    def create_group(self) -> None:
        """Create the stream and its consumer group (reading from the start) unless they
        exist."""
        try:
            self.client.xgroup_create(self.settings.name, self.settings.group, id="0",
                                      mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish(self, events: list[StreamEvent]) -> list[str]:
        """Append events (one round trip); their entry ids."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            args, kwargs = _xadd(self.settings, event)
            pipe.xadd(*args, **kwargs)
        return pipe.execute()

    def read(self, consumer: str, count: int, block_ms: int, pending: bool) -> list[Entry]:
        """Up to `count` entries for `consumer`: its own delivered but unacknowledged ones
        (`pending`, what a restarted consumer must finish first), else new ones, waiting up to
        `block_ms` for them."""
        reply = self.client.xreadgroup(self.settings.group, consumer,
                                       {self.settings.name: "0" if pending else ">"},
                                       count=count, block=None if pending else block_ms)
        # An entry trimmed away while pending comes back with no fields: nothing to count.
        return [(i, f) for _, entries in reply or [] for i, f in entries if f]

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Take over entries other consumers were given but left unacknowledged for `idle_ms`
        (a consumer that died)."""
        _, entries, deleted = self.client.xautoclaim(
            self.settings.name, self.settings.group, consumer, min_idle_time=idle_ms,
            start_id="0-0", count=count)
        if deleted:
            self.ack(list(deleted))
        return [(i, f) for i, f in entries if f]

    def ack(self, ids: list[str]) -> None:
        """Mark entries done for the group."""
        if ids:
            self.client.xack(self.settings.name, self.settings.group, *ids)

    def dead_letter(self, rejected: list[tuple[Entry, str]]) -> None:
        """Move malformed entries to the dead-letter stream with their reason, and acknowledge
        them, in one transaction (so an entry is dead-lettered once)."""
        if not rejected:
            return
        pipe = self.client.pipeline(transaction=True)
        for (entry_id, fields), reason in rejected:
            pipe.xadd(self.settings.dead_letters,
                      {"entry_id": entry_id, "reason": reason, "fields": json.dumps(fields)},
                      maxlen=self.settings.max_length, approximate=True)
        pipe.xack(self.settings.name, self.settings.group, *[e[0] for e, _ in rejected])
        pipe.execute()

    def lag(self) -> dict[str, int]:
        """The group's `lag` (entries not yet delivered to it) and `pending` (delivered, not
        acknowledged)."""
        for group in self.client.xinfo_groups(self.settings.name):
            if group["name"] == self.settings.group:
                return {"lag": int(group.get("lag") or 0), "pending": int(group["pending"])}
        return {"lag": int(self.client.xlen(self.settings.name)), "pending": 0}


class AsyncPublisher:
    """Publishing from an event loop (the Serve ingress): one pipelined XADD per request."""

    def __init__(self, settings: StreamSettings, timeout_s: float = 1.0) -> None:
        self.settings = settings
        self.client = redis.asyncio.Redis.from_url(settings.url, decode_responses=True,
                                                   socket_timeout=timeout_s,
                                                   socket_connect_timeout=timeout_s)

    async def publish(self, events: list[StreamEvent]) -> list[str]:
        """Append events; their entry ids."""
        async with self.client.pipeline(transaction=False) as pipe:
            for event in events:
                args, kwargs = _xadd(self.settings, event)
                pipe.xadd(*args, **kwargs)
            return await pipe.execute()

    async def close(self) -> None:
        """Release the connections."""
        await self.client.aclose()


def open_stream(settings: StreamSettings) -> EventStream:
    """The stream `settings` name, its consumer group created."""
    stream = RedisStream(settings)
    stream.create_group()
    return stream

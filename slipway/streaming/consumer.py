"""The stream feature consumer: a long-running Ray actor per consumer of the group.

Each batch: decode the entries (malformed ones go to the dead-letter stream with their reason),
add the counted events to the window state (idempotent per event id, slipway/streaming/windows.py),
push the touched users' and articles' features to Feast's online store and append them to the
stream views' offline tables, then acknowledge. An actor that dies is restarted by Ray under the
same consumer name and first finishes the entries it was given and never acknowledged; entries a
consumer left unacknowledged for `claim_idle_ms` are claimed by the others. So every event
counts once, whatever dies when. Consumers read the window state and push under one Redis lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray
from pydantic import Field
from ray.util.metrics import Counter, Gauge, Histogram

from slipway.config import StrictModel
from slipway.features.settings import FeatureStoreSettings
from slipway.features.store import open_store, push_stream
from slipway.storage import Storage
from slipway.streaming.events import COUNTED, StreamEvent, decode
from slipway.streaming.stream import Entry, RedisStream, StreamSettings
from slipway.streaming.windows import WindowState

logger = logging.getLogger(__name__)
PUSH_LOCK_S = 10.0  # a consumer killed holding the push lock holds it this long at most


class ConsumerSettings(StrictModel):
    """How each consumer reads the stream."""

    stream: StreamSettings = StreamSettings()
    consumers: int = Field(default=1, ge=1, le=64, description="actors in the consumer group")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="entries per read")
    block_ms: int = Field(default=500, ge=1, description="how long a read waits for entries")
    claim_idle_ms: int = Field(
        default=30_000, ge=100, description="entries unacknowledged this long are taken over "
        "from the consumer that was given them")
    num_cpus: float = Field(default=0.25, gt=0, description="Ray CPUs each consumer holds")


class StreamConsumer:
    """One consumer of the group; its loop runs on a thread from construction (the actor's
    methods answer meanwhile)."""

    def __init__(self, name: str, settings: dict, storage_root: str, feature_store: dict,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.settings = ConsumerSettings(**settings)
        self.stream = RedisStream(self.settings.stream)
        self.stream.create_group()
        self.state = WindowState(self.stream.client, f"{self.settings.stream.name}:windows")
        self.storage = Storage(storage_root)
        self.store = open_store(FeatureStoreSettings(**feature_store), self.storage)
        self.clock = clock
        self.counts = {"processed": 0, "dead_lettered": 0, "pushed_rows": 0, "batches": 0}
        tags = {"stream": self.settings.stream.name}
        self._events = Counter("slipway_stream_events_total", "stream entries by outcome",
                               tag_keys=("stream", "outcome"))
        self._events.set_default_tags(tags)
        self._lag = Gauge("slipway_stream_lag_entries", "entries the group has not acknowledged "
                          "(undelivered plus pending)", tag_keys=("stream",))
        self._lag.set_default_tags(tags)
        self._freshness = Histogram(
            "slipway_stream_freshness_seconds", "event time to its features pushed online",
            boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60], tag_keys=("stream",))
        self._freshness.set_default_tags(tags)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"consumer-{name}", daemon=True)
        self._thread.start()

    def process(self, entries: list[Entry]) -> None:
        """Count a batch's events into the features, publish them, then acknowledge."""
        events: list[StreamEvent] = []
        accepted: list[str] = []
        rejected: list[tuple[Entry, str]] = []
        for entry in entries:
            decoded = decode(entry[1])
            if isinstance(decoded, str):
                rejected.append((entry, decoded))
            else:
                events.append(decoded)
                accepted.append(entry[0])
        self.stream.dead_letter(rejected)
        touched = self.state.record(events)
        # Read and push under the group's lock, so pushes land in the order their states were
        # read: the last push of an entity comes after its last event was recorded, and no
        # consumer's older reading overwrites a newer one.
        with self.stream.client.lock(f"{self.state.prefix}:push-lock", timeout=PUSH_LOCK_S,
                                     blocking_timeout=10 * PUSH_LOCK_S):
            for kind, entities in touched.items():
                rows = self.state.features(kind, entities)
                push_stream(self.store, self.storage, f"{kind}_stream", rows, self.name)
                self.counts["pushed_rows"] += rows.num_rows
        now = self.clock()
        for event in events:
            if event.type in COUNTED:
                self._freshness.observe(max(0.0, now - event.ts_ms / 1000))
        self.stream.ack(accepted)
        self.counts["processed"] += len(events)
        self.counts["dead_lettered"] += len(rejected)
        self.counts["batches"] += 1
        self._events.inc(len(events), {"outcome": "processed"})
        if rejected:
            self._events.inc(len(rejected), {"outcome": "dead_letter"})

    def _loop(self) -> None:
        pending = True  # first finish what this consumer was given before it last stopped
        last_claim = last_lag = 0.0
        while not self._stop.is_set():
            try:
                entries = self.stream.read(self.name, self.settings.batch_size,
                                           self.settings.block_ms, pending)
                if pending and not entries:
                    pending = False
                now = self.clock()
                if now - last_claim >= self.settings.claim_idle_ms / 2000:
                    last_claim = now
                    entries += self.stream.claim_stale(self.name, self.settings.claim_idle_ms,
                                                       self.settings.batch_size)
                if entries:
                    self.process(entries)
                if now - last_lag >= 1.0:  # one XINFO a second, not one per batch
                    last_lag = now
                    lag = self.stream.lag()
                    self._lag.set(lag["lag"] + lag["pending"])
            except Exception:  # Redis or the feature store down: retry what is pending
                logger.exception("stream consumer %s: batch failed; retrying", self.name)
                pending = True
                self._stop.wait(1.0)

    def stats(self) -> dict:
        """What this incarnation has done, and the group's lag."""
        return {**self.counts, **self.stream.lag(), "name": self.name}

    def stop(self) -> None:
        """Finish the current batch and stop reading."""
        self._stop.set()
        self._thread.join(timeout=60)


def start_consumers(settings: ConsumerSettings, storage_root: str, feature_store: dict,
                    prefix: str = "features") -> list[ray.actor.ActorHandle]:
    """Start the group's consumers as Ray actors that Ray restarts when they die."""
    actor = ray.remote(StreamConsumer).options(
        num_cpus=settings.num_cpus, max_restarts=-1, max_task_retries=-1)
    return [actor.remote(f"{prefix}-{i}", settings.model_dump(), storage_root, feature_store)
            for i in range(settings.consumers)]


def stop_consumers(consumers: list[ray.actor.ActorHandle]) -> None:
    """Let each consumer finish its batch, then end the actors (releasing their CPUs)."""
    ray.get([c.stop.remote() for c in consumers])
    for consumer in consumers:
        ray.kill(consumer, no_restart=True)

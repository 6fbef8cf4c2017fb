"""The prediction log (every answer the app gives, in the format of `slipway.predictions`) and
the outcome-event log (`slipway.experiments.events`), as Parquet on the storage root. Rows are
buffered in memory and written by a background task when `flush_rows` have gathered or
`flush_interval_s` has passed, off the request path; what is buffered is written on shutdown.
Drift monitoring and A/B analysis read these files.

While storage is unreachable the rows wait for the next flush, up to `max_buffered_rows`; past
that the oldest are dropped and counted (`slipway_prediction_log_dropped_rows_total`,
`slipway_event_log_dropped_rows_total`), so an outage costs log rows, never memory or requests.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ray.util.metrics import Counter

from serve_apps.settings import LoggingSettings
from slipway.experiments.events import write_events
from slipway.predictions import log_row, write_rows
from slipway.storage import Storage

logger = logging.getLogger("ray.serve")
Writer = Callable[[Storage, list[dict[str, Any]], str], int]


class BufferedLog:
    """Buffered, asynchronous Parquet writer for one process (an ingress replica): `write`
    stores a batch of rows; `what` names the log in its dropped-rows metric."""

    def __init__(self, storage: Storage, settings: LoggingSettings, write: Writer,
                 what: str) -> None:
        self.storage = storage
        self.settings = settings
        self.write = write
        self.writer = uuid.uuid4().hex[:12]
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self.dropped = 0
        self._dropped_metric = Counter(f"slipway_{what}_log_dropped_rows_total",
                                       f"{what} log rows dropped while storage was unreachable")
        self._task: asyncio.Task | None = None
        self._flush_queued = False
        self._flushing = asyncio.Lock()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows; never blocks on storage."""
        if not self.settings.enabled:
            return
        self.rows.extend(rows)
        self._bound()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self.rows) >= self.settings.flush_rows and not self._flush_queued:
            self._flush_queued = True  # one flush per full buffer, not one per request after it
            asyncio.get_running_loop().create_task(self.flush())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered (in a thread) and return the number of rows written."""
        async with self._flushing:
            self._flush_queued = False
            rows, self.rows = self.rows, []
            if not rows:
                return 0
            try:
                await asyncio.to_thread(self.write, self.storage, rows, self.writer)
            except Exception:  # storage down: keep the rows for the next flush, log once per try
                logger.exception("writing %d log rows failed; will retry", len(rows))
                self.rows = rows + self.rows
                self._bound()
                return 0
            self.written += len(rows)
            return len(rows)

    def _bound(self) -> None:
        """Drop the oldest rows past `max_buffered_rows`, counting them."""
        excess = len(self.rows) - self.settings.max_buffered_rows
        if excess > 0:
            del self.rows[:excess]
            self.dropped += excess
            self._dropped_metric.inc(excess)

    async def close(self) -> None:
        """Stop the timer and write what is left."""
        if self._task is not None:
            self._task.cancel()
        await self.flush()


class PredictionLog(BufferedLog):
    """The prediction log of one ingress replica."""

    def __init__(self, storage: Storage, settings: LoggingSettings) -> None:
        super().__init__(storage, settings, write_rows, "prediction")

    def record(self, request_id: str, route: str, api_key: str, model: str, version: Any,
               inputs: Any, output: Any, latency_ms: float, status: int = 200,
               experiment: tuple[str, str, str] | None = None) -> None:
        """Queue one prediction (an exposure when `experiment` gives its experiment, variant
        and unit); never blocks on storage."""
        self.append([log_row(request_id, datetime.now(timezone.utc), route, api_key, model,
                             version, inputs, output, latency_ms, status, experiment)])


def event_log(storage: Storage, settings: LoggingSettings) -> BufferedLog:
    """The outcome-event log of one ingress replica."""
    return BufferedLog(storage, settings, write_events, "event")

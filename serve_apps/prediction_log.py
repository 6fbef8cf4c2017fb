"""The prediction log: every answer the app gives, as Parquet on the storage root, in the format
of `slipway.predictions`. Rows are buffered in memory and written by a background task when
`flush_rows` have gathered or `flush_interval_s` has passed, off the request path; what is buffered
is written on shutdown. Drift monitoring and A/B analysis read these files.

While storage is unreachable the rows wait for the next flush, up to `max_buffered_rows`; past
that the oldest are dropped and counted in `slipway_prediction_log_dropped_rows_total`, so an
outage costs log rows, never memory or requests.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from ray.util.metrics import Counter

from serve_apps.settings import LoggingSettings
from slipway.predictions import log_row, write_rows
from slipway.storage import Storage

logger = logging.getLogger("ray.serve")


class PredictionLog:
    """Buffered, asynchronous Parquet writer for one process (an ingress replica)."""

    def __init__(self, storage: Storage, settings: LoggingSettings) -> None:
        self.storage = storage
        self.settings = settings
        self.writer = uuid.uuid4().hex[:12]
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self.dropped = 0
        self._dropped_metric = Counter("slipway_prediction_log_dropped_rows_total",
                                       "Prediction-log rows dropped while storage was unreachable")
        self._task: asyncio.Task | None = None
        self._flush_queued = False
        self._flushing = asyncio.Lock()

    def record(self, request_id: str, route: str, api_key: str, model: str, version: Any,
               inputs: Any, output: Any, latency_ms: float, status: int = 200) -> None:
        """Queue one prediction; never blocks on storage."""
        if not self.settings.enabled:
            return
        self.rows.append(log_row(request_id, datetime.now(timezone.utc), route, api_key, model,
                                 version, inputs, output, latency_ms, status))
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
                await asyncio.to_thread(write_rows, self.storage, rows, self.writer)
            except Exception:  # storage down: keep the rows for the next flush, log once per try
                logger.exception("prediction log: writing %d rows failed; will retry", len(rows))
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

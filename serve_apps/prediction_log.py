"""The prediction log: every answer the app gives, as Parquet on the storage root.

    <root>/predictions/<route>/date=YYYY-MM-DD/<writer>-<n>.parquet

One row per prediction: request id, time, route, API key name, model name and version, inputs (or
the features the model saw), output and latency; structured values are JSON strings, so one schema
serves every route. Rows are buffered in memory and written by a background task when
`flush_rows` have gathered or `flush_interval_s` has passed, off the request path; what is buffered
is written on shutdown. Drift monitoring and A/B analysis read these files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from serve_apps.settings import LoggingSettings
from slipway.storage import Storage

logger = logging.getLogger("ray.serve")

SCHEMA = pa.schema([
    ("request_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("route", pa.string()), ("api_key", pa.string()), ("model", pa.string()),
    ("model_version", pa.string()), ("inputs", pa.string()), ("output", pa.string()),
    ("latency_ms", pa.float64()), ("status", pa.int32()),
])


class PredictionLog:
    """Buffered, asynchronous Parquet writer for one process (an ingress replica)."""

    def __init__(self, storage: Storage, settings: LoggingSettings) -> None:
        self.storage = storage
        self.settings = settings
        self.writer = uuid.uuid4().hex[:12]
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self._files = 0
        self._task: asyncio.Task | None = None
        self._flush_queued = False
        self._flushing = asyncio.Lock()

    def record(self, request_id: str, route: str, api_key: str, model: str, version: Any,
               inputs: Any, output: Any, latency_ms: float, status: int = 200) -> None:
        """Queue one prediction; never blocks on storage."""
        if not self.settings.enabled:
            return
        self.rows.append({
            "request_id": request_id, "timestamp": datetime.now(timezone.utc), "route": route,
            "api_key": api_key, "model": model, "model_version": str(version),
            "inputs": json.dumps(inputs, default=str), "output": json.dumps(output, default=str),
            "latency_ms": latency_ms, "status": status})
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
                await asyncio.to_thread(self._write, rows)
            except Exception:  # storage down: keep the rows for the next flush, log once per try
                logger.exception("prediction log: writing %d rows failed; will retry", len(rows))
                self.rows = rows + self.rows
                return 0
            self.written += len(rows)
            return len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[(row["route"].strip("/").replace("/", "_"),
                    row["timestamp"].strftime("%Y-%m-%d"))].append(row)
        for (route, day), part in groups.items():
            self._files += 1
            table = pa.Table.from_pylist(part, schema=SCHEMA)
            name = f"{self.writer}-{int(time.time() * 1000)}-{self._files:05d}.parquet"
            with self.storage.open_output("predictions", route, f"date={day}", name) as out:
                pq.write_table(table, out)

    async def close(self) -> None:
        """Stop the timer and write what is left."""
        if self._task is not None:
            self._task.cancel()
        await self.flush()

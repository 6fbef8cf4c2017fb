"""The prediction log's format: what the Serve app writes and what monitoring reads.

    <root>/predictions/<route>/date=YYYY-MM-DD/<writer>-<millis>-<random>.parquet

One row per answer: request id, time, route, API key name, model name and version, inputs (or the
features the model saw), output and latency. Structured values are JSON strings, so one schema
serves every route. Writers add small files; `compact` merges a finished day's files into one
(readers drop the duplicates they may see while it swaps them; the monitor compacts before it
reads). `flatten` turns a route's rows into one row per scored item with its features and
prediction, the frame drift and performance monitors work on.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import defaultdict
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from slipway.storage import Storage

SCHEMA = pa.schema([
    ("request_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("route", pa.string()), ("api_key", pa.string()), ("model", pa.string()),
    ("model_version", pa.string()), ("inputs", pa.string()), ("output", pa.string()),
    ("latency_ms", pa.float64()), ("status", pa.int32()),
])


def route_folder(route: str) -> str:
    """Folder name of a route's log: `/v1/rank` -> `v1_rank`."""
    return route.strip("/").replace("/", "_")


def log_row(request_id: str, timestamp: datetime, route: str, api_key: str, model: str,
            version: Any, inputs: Any, output: Any, latency_ms: float, status: int = 200
            ) -> dict[str, Any]:
    """One prediction-log row; `inputs` and `output` are stored as JSON."""
    return {"request_id": request_id, "timestamp": timestamp, "route": route,
            "api_key": api_key, "model": model, "model_version": str(version),
            "inputs": json.dumps(inputs, default=str), "output": json.dumps(output, default=str),
            "latency_ms": latency_ms, "status": status}


def write_rows(storage: Storage, rows: list[dict[str, Any]], writer: str) -> int:
    """Write rows as Parquet, one file per (route, day); return the number of files."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(route_folder(row["route"]), row["timestamp"].strftime("%Y-%m-%d"))].append(row)
    for (route, day), part in groups.items():
        table = pa.Table.from_pylist(part, schema=SCHEMA)
        name = f"{writer}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}.parquet"
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        # Whole files only: the monitor and the tests read the log while the app writes it.
        storage.write_whole(buffer.getvalue().to_pybytes(), "predictions", route, f"date={day}",
                            name)
    return len(groups)


def compact(storage: Storage, route: str, before: date) -> int:
    """Merge each day's files of `route` before `before` (finished days) into one file; return
    the number of files merged away. The merged file is written whole before the parts go."""
    prefix = storage.uri() + "/"
    by_day: dict[str, list[list[str]]] = defaultdict(list)
    for uri in storage.list_files("predictions", route_folder(route)):
        parts = uri.removeprefix(prefix).split("/")
        if parts[-1].endswith(".parquet") and parts[-2].startswith("date="):
            by_day[parts[-2].removeprefix("date=")].append(parts)
    merged = 0
    for day, files in sorted(by_day.items()):
        if date.fromisoformat(day) >= before or len(files) < 2:
            continue
        table = pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(*f)), schema=SCHEMA)
                                 for f in files).sort_by("timestamp")
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        name = f"compacted-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}.parquet"
        storage.write_whole(buffer.getvalue().to_pybytes(), *files[0][:-1], name)
        for f in files:
            storage.remove(*f)
        merged += len(files)
    return merged


def read_log(storage: Storage, route: str, model: str | None = None) -> pd.DataFrame:
    """A route's successful log rows, oldest first (empty frame when nothing is logged)."""
    if not storage.list_files("predictions", route_folder(route)):
        return SCHEMA.empty_table().to_pandas()
    dataset = pads.dataset(storage.uri("predictions", route_folder(route)), format="parquet",
                           schema=SCHEMA, partitioning="hive")
    table = dataset.to_table(columns=SCHEMA.names)
    frame = table.to_pandas().drop_duplicates(["request_id", "timestamp", "model", "output"])
    frame = frame[frame["status"] == 200]
    if model is not None:
        frame = frame[frame["model"] == model]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (missing values as None), as the log stores features."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def flatten(log: pd.DataFrame, route: str) -> pd.DataFrame:
    """One row per scored item: `timestamp`, `request_id`, `model_version`, the item's inputs and
    `prediction` (the ranker's score; the classifier's label, plus its `confidence`)."""
    rows: list[dict[str, Any]] = []
    base_cols = ("timestamp", "request_id", "model_version")
    for rec in log.itertuples(index=False):
        base = {c: getattr(rec, c) for c in base_cols}
        inputs, output = json.loads(rec.inputs), json.loads(rec.output)
        if route_folder(route) == "v1_rank":
            scores = {r["article_id"]: r["score"] for r in output}
            rows += [{**base, **features, "prediction": scores[features["article_id"]]}
                     for features in inputs]
        elif route_folder(route) == "v1_classify":
            rows += [{**base, "position": i, "text": text, "prediction": p["label"],
                      "confidence": max(p["probabilities"].values())}
                     for i, (text, p) in enumerate(zip(inputs, output, strict=True))]
        else:
            raise ValueError(f"route {route!r}: monitoring reads /v1/rank and /v1/classify logs")
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*base_cols, "prediction"])
    return frame.replace({None: np.nan}).infer_objects()

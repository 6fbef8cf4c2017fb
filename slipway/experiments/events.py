"""Outcome events (`POST /v1/events`): impressions, clicks, dwell seconds and conversions.

    <root>/events/date=YYYY-MM-DD/<writer>-<millis>-<random>.parquet

Each event names the answer it follows by `request_id` (the `X-Request-ID` of the request that
showed the items) and/or the user and item, so outcomes join the prediction log's exposures
exactly.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from slipway.storage import Storage

EVENT_TYPES = ("impression", "click", "dwell", "conversion")
SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.int64()), ("article_id", pa.int64()),
    ("type", pa.string()), ("value", pa.float64()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("api_key", pa.string()),
])


def write_events(storage: Storage, rows: list[dict[str, Any]], writer: str) -> int:
    """Write event rows as Parquet, one file per day; return the number of files."""
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        days[row["timestamp"].strftime("%Y-%m-%d")].append(row)
    for day, part in days.items():
        storage.write_part(pa.Table.from_pylist(part, schema=SCHEMA), writer, "events",
                           f"date={day}")
    return len(days)


def read_events(storage: Storage) -> pd.DataFrame:
    """Every event, oldest first."""
    if not storage.list_files("events"):
        return SCHEMA.empty_table().to_pandas()
    table = pads.dataset(storage.uri("events"), format="parquet", schema=SCHEMA,
                         partitioning="hive").to_table(columns=SCHEMA.names)
    return table.to_pandas().sort_values("timestamp", kind="stable").reset_index(drop=True)

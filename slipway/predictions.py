"""The prediction log's format: what the Serve app writes and what monitoring reads.

    <root>/predictions/<route>/date=YYYY-MM-DD/<writer>-<millis>-<random>.parquet

One row per answer: request id, time, route, API key name, model name and version, inputs (or the
features the model saw), output and latency. The monitored routes store their inputs and outputs
as typed Arrow columns (`/v1/rank`: a list of feature structs and of scores; `/v1/classify`: a
list of texts and of labels with probabilities), so the monitor reads them column-wise with no
JSON decoding; the other routes store JSON text. Writers add small files; `compact` merges a
finished day's files into one (readers drop the duplicates they may see while it swaps them; the
monitor compacts before it reads). `flatten` turns a route's rows into one row per scored item
with its features and prediction, the frame drift and performance monitors work on.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from slipway.features.columns import STREAM_COLUMNS, VIEW_COLUMNS
from slipway.storage import Storage

COMMON = [
    ("request_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("route", pa.string()), ("api_key", pa.string()), ("model", pa.string()),
    ("model_version", pa.string()), ("latency_ms", pa.float64()), ("status", pa.int32()),
    # The experiment and variant an answer was served in, and the randomisation unit's id.
    ("experiment", pa.string()), ("variant", pa.string()), ("unit", pa.string()),
]
RANK_FEATURES = pa.struct([("user_id", pa.int64()), ("article_id", pa.int64()),
                           *(f for fields in (*VIEW_COLUMNS.values(), *STREAM_COLUMNS.values())
                             for f in fields)])
RANK_SCORE = pa.struct([("article_id", pa.int64()), ("score", pa.float64()),
                        ("features_found", pa.bool_())])
LABEL = pa.struct([("label", pa.string()),
                   ("probabilities", pa.map_(pa.string(), pa.float64()))])
# (inputs, output) types of the routes stored typed; every other route stores JSON text.
TYPED = {"/v1/rank": (pa.list_(RANK_FEATURES), pa.list_(RANK_SCORE)),
         "/v1/classify": (pa.list_(pa.string()), pa.list_(LABEL))}


def schema(route: str) -> pa.Schema:
    """The log schema of `route`."""
    inputs, output = TYPED.get(route, (pa.string(), pa.string()))
    return pa.schema([*COMMON, ("inputs", inputs), ("output", output)])


def route_folder(route: str) -> str:
    """Folder name of a route's log: `/v1/rank` -> `v1_rank`."""
    return route.strip("/").replace("/", "_")


def log_row(request_id: str, timestamp: datetime, route: str, api_key: str, model: str,
            version: Any, inputs: Any, output: Any, latency_ms: float, status: int = 200,
            experiment: tuple[str, str, str] | None = None) -> dict[str, Any]:
    """One prediction-log row; `inputs` and `output` as the route's schema stores them;
    `experiment`: (experiment, variant, unit id) of an exposure."""
    if route not in TYPED:
        inputs, output = json.dumps(inputs, default=str), json.dumps(output, default=str)
    return {"request_id": request_id, "timestamp": timestamp, "route": route,
            "api_key": api_key, "model": model, "model_version": str(version),
            "inputs": inputs, "output": output, "latency_ms": latency_ms, "status": status,
            **dict(zip(("experiment", "variant", "unit"), experiment or (None,) * 3,
                       strict=True))}


def write_rows(storage: Storage, rows: list[dict[str, Any]], writer: str) -> int:
    """Write rows as Parquet, one file per (route, day); return the number of files."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["route"], row["timestamp"].strftime("%Y-%m-%d"))].append(row)
    for (route, day), part in groups.items():
        # Whole files only: the monitor and the tests read the log while the app writes it.
        storage.write_part(pa.Table.from_pylist(part, schema=schema(route)), writer,
                           "predictions", route_folder(route), f"date={day}")
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
        table = pa.concat_tables(
            pq.read_table(io.BytesIO(storage.read_bytes(*f)), schema=schema(route))
            for f in files).sort_by("timestamp")
        storage.write_part(table, "compacted", *files[0][:-1])
        for f in files:
            storage.remove(*f)
        merged += len(files)
    return merged


def read_log(storage: Storage, route: str, model: str | None = None,
             experiment: str | None = None) -> pa.Table:
    """A route's log rows, oldest first (an empty table when nothing is logged): the successful
    answers, or with `experiment` every exposure of that experiment, failed ones included."""
    if not storage.list_files("predictions", route_folder(route)):
        return schema(route).empty_table()
    dataset = pads.dataset(storage.uri("predictions", route_folder(route)), format="parquet",
                           schema=schema(route), partitioning="hive")
    keep = (pc.field("status") == 200 if experiment is None
            else pc.field("experiment") == experiment)
    if model is not None:
        keep = keep & (pc.field("model") == model)
    table = dataset.to_table(columns=schema(route).names, filter=keep)
    # A file being compacted may be read twice: an answer is its request id, time and model.
    keys = table.select(["request_id", "timestamp", "model"]).to_pandas()
    table = table.filter(pa.array(~keys.duplicated().to_numpy()))
    return table.take(pc.sort_indices(table, [("timestamp", "ascending")]))


def json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (missing values as None), as the log stores features."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _items(table: pa.Table, column: str) -> tuple[pa.Array, np.ndarray]:
    """The list column's items, flattened, with the row each came from."""
    lists = table[column].combine_chunks()
    return pc.list_flatten(lists), pc.list_parent_indices(lists).to_numpy()


def flatten(log: pa.Table, route: str) -> pd.DataFrame:
    """One row per scored item: `timestamp`, `request_id`, `model_version`, the item's inputs and
    `prediction` (the ranker's score; the classifier's label, plus its `confidence`), read
    column-wise from the typed log."""
    base_cols = ["timestamp", "request_id", "model_version"]
    if route not in TYPED:
        raise ValueError(f"route {route!r}: monitoring reads /v1/rank and /v1/classify logs")
    if log.num_rows == 0:
        return pd.DataFrame(columns=[*base_cols, "prediction"])
    base = log.select(base_cols)
    inputs, rows = _items(log, "inputs")
    if route == "/v1/rank":
        frame = pa.Table.from_struct_array(inputs).to_pandas()
        outputs, out_rows = _items(log, "output")
        scores = pd.DataFrame({"_row": out_rows, "article_id": outputs.field("article_id"),
                               "prediction": outputs.field("score")})
        frame = frame.assign(_row=rows).merge(
            scores.drop_duplicates(["_row", "article_id"]), on=["_row", "article_id"],
            how="left")
        frame = pd.concat([base.take(pa.array(frame.pop("_row"))).to_pandas(), frame], axis=1)
        return frame.replace({None: np.nan}).infer_objects()
    outputs, _ = _items(log, "output")
    if len(rows) == 0:
        return pd.DataFrame(columns=[*base_cols, "position", "text", "prediction", "confidence"])
    offsets = log["inputs"].combine_chunks().offsets.to_numpy()
    probabilities = outputs.field("probabilities")
    ends = probabilities.offsets.to_numpy()  # maps keep their unsliced items: index with these
    values = probabilities.items.to_numpy(zero_copy_only=False)[:ends[-1]]
    return pd.concat([base.take(pa.array(rows)).to_pandas(), pd.DataFrame({
        "position": np.arange(len(rows)) + offsets[0] - offsets[rows],
        "text": inputs.to_pandas(),
        "prediction": outputs.field("label").to_pandas(),
        "confidence": np.maximum.reduceat(values, ends[:-1])})], axis=1)


def classified_texts(log: pa.Table) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Every text a /v1/classify log answered, with its class probabilities: a frame of
    `timestamp`, `request_id`, `model_version`, `text`; a texts x classes matrix; the classes
    (every label the answers name, sorted)."""
    texts, rows = _items(log, "inputs")
    outputs, _ = _items(log, "output")
    probabilities = outputs.field("probabilities")
    ends = probabilities.offsets.to_numpy()
    keys = probabilities.keys.to_numpy(zero_copy_only=False)[ends[0]:ends[-1]]
    values = probabilities.items.to_numpy(zero_copy_only=False)[ends[0]:ends[-1]]
    classes = sorted(set(keys))
    matrix = np.zeros((len(outputs), len(classes)))
    owner = np.repeat(np.arange(len(outputs)), np.diff(ends))
    matrix[owner, pd.Index(classes).get_indexer(keys)] = values
    frame = log.select(["timestamp", "request_id", "model_version"]).take(
        pa.array(rows)).to_pandas().assign(text=texts.to_pandas())
    return frame, matrix, classes

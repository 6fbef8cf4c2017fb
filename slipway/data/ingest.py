"""Reading landed files with Ray Data and splitting them into validated and quarantined rows.

CSV and JSONL files are parsed per file inside Ray tasks so that a malformed line (wrong number of
fields, broken JSON) becomes a quarantined row with its text, not a failed read or a lost row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import ray.data
from pydantic import Field
from ray.data.expressions import col

from slipway.data.schema import RAW, REASON, SOURCE, DatasetSchema, to_arrow, validate_batch
from slipway.storage import Storage

PARSE_ERROR = "_parse_error"
FORMATS = ("csv", "jsonl", "parquet")


class IngestSpec(DatasetSchema):
    """A dataset to ingest: where its files are, their format, and the schema rows must meet."""

    path: str
    format: Literal["csv", "jsonl", "parquet"] | None = None
    max_quarantine_share: float = Field(default=0.05, ge=0, le=1)


@dataclass
class IngestResult:
    """Counts of one dataset's ingest; `read == accepted + quarantined` always holds."""

    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    curated_uri: str
    quarantine_uri: str

    @property
    def quarantined_share(self) -> float:
        """Share of read rows that were quarantined."""
        return self.quarantined / self.read if self.read else 0.0


def resolve_path(path: str, storage: Storage) -> str:
    """A URI or absolute path as given; a relative path is taken under the storage root."""
    if "://" in path or path.startswith("/"):
        return path
    return storage.uri(path)


def detect_format(spec: IngestSpec, files: list[str]) -> str:
    """The declared format, else the one all file extensions agree on."""
    if spec.format:
        return spec.format
    exts = {f.rsplit(".", 1)[-1].lower() for f in files}
    exts = {"jsonl" if e in ("json", "ndjson") else e for e in exts}
    if len(exts) == 1 and (fmt := exts.pop()) in FORMATS:
        return fmt
    raise ValueError(f"cannot tell the format of {spec.path} from extensions {sorted(exts)}; "
                     f"set format: one of {list(FORMATS)}")


def _frame(records: list[dict], names: list[str], source: str) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=[*names, PARSE_ERROR, RAW])
    frame[SOURCE] = source
    return frame.astype(object)


def parse_csv(data: bytes, source: str, names: list[str]) -> pd.DataFrame:
    """Parse one CSV file, all values as text; malformed rows kept with their text."""
    text_head = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    header = next(csv.reader([text_head]), [])
    bad: list[dict] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append({PARSE_ERROR: f"malformed CSV row: expected {row.expected_columns} fields, "
                                 f"got {row.actual_columns}", RAW: row.text})
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(encoding="utf8"),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            include_columns=[n for n in names if n in header],
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    good = table.to_pandas().astype(object)
    good[SOURCE] = source
    return pd.concat([good, _frame(bad, names, source)], ignore_index=True) if bad else good


def parse_jsonl(data: bytes, source: str, names: list[str]) -> pd.DataFrame:
    """Parse one JSON-lines file; lines that are not JSON objects are kept with their text."""
    records: list[dict] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            obj = None
            error = f"invalid JSON on line {number}: {exc.msg}"
        else:
            error = None if isinstance(obj, dict) else f"line {number} is not a JSON object"
        if error:
            records.append({PARSE_ERROR: error, RAW: line})
        else:
            records.append({n: obj.get(n) for n in names})
    return _frame(records, names, source)


def _validate_files(batch: pd.DataFrame, schema: DatasetSchema, fmt: str) -> pa.Table:
    names = [c.name for c in schema.columns]
    parse = parse_csv if fmt == "csv" else parse_jsonl
    frames = [parse(data, path, names)
              for data, path in zip(batch["bytes"], batch["path"], strict=True)]
    return _validate_rows(pd.concat(frames, ignore_index=True), schema)


def _validate_rows(rows: pd.DataFrame, schema: DatasetSchema) -> pa.Table:
    validated = validate_batch(rows.drop(columns=[PARSE_ERROR, RAW, SOURCE], errors="ignore"),
                               schema)
    if PARSE_ERROR in rows:
        broken = rows[PARSE_ERROR].notna().to_numpy()
        validated.loc[broken, REASON] = rows.loc[broken, PARSE_ERROR]
        validated.loc[broken, RAW] = rows.loc[broken, RAW]
    return to_arrow(validated, schema, rows[SOURCE].astype(str))


def read_validated(spec: IngestSpec, uri: str) -> ray.data.Dataset:
    """Ray Dataset of every row read from `uri`, typed, with `_reason` set on invalid rows."""
    files = Storage(uri).list_files()
    if not files:
        raise FileNotFoundError(f"no files at {uri}; check the dataset's path")
    fmt = spec.format or detect_format(spec, files)
    schema = DatasetSchema(columns=spec.columns)
    if fmt == "parquet":
        ds = ray.data.read_parquet(files, include_paths=True)
        return ds.map_batches(
            lambda b: _validate_rows(b.rename(columns={"path": SOURCE}), schema),
            batch_format="pandas", batch_size=None)
    ds = ray.data.read_binary_files(files, include_paths=True)
    return ds.map_batches(lambda b: _validate_files(b, schema, fmt), batch_format="pandas",
                          batch_size=1)


def _reason_counts(quarantined: ray.data.Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in quarantined.select_columns([REASON]).iter_batches(batch_format="pyarrow"):
        for reason in batch.column(REASON).to_pylist():
            for part in reason.split("; "):
                if part.startswith("malformed CSV row"):
                    key = "malformed CSV row"
                elif part.startswith(("invalid JSON", "line ")):
                    key = "invalid JSON"
                else:
                    key = part.split(":", 1)[0]
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def ingest_dataset(name: str, spec: IngestSpec, storage: Storage) -> IngestResult:
    """Validate one dataset, write quarantined rows to quarantine/ and accepted rows to curated/.

    Accepted rows are published only when the quarantined share is within the spec's limit, so a
    bad delivery never replaces the last good curated version.
    """
    uri = resolve_path(spec.path, storage)
    names = [c.name for c in spec.columns]
    validated = read_validated(spec, uri).materialize()
    accepted = validated.filter(expr=col(REASON).is_null()).select_columns(names)
    quarantined = validated.filter(expr=col(REASON).is_not_null()).select_columns(
        [SOURCE, REASON, RAW])
    n_read, n_accepted = validated.count(), accepted.count()
    curated_uri, quarantine_uri = storage.uri("curated", name), storage.uri("quarantine", name)
    result = IngestResult(read=n_read, accepted=n_accepted, quarantined=n_read - n_accepted,
                          reasons=_reason_counts(quarantined) if n_read - n_accepted else {},
                          curated_uri=curated_uri, quarantine_uri=quarantine_uri)
    storage.remove("quarantine", name)
    if result.quarantined:
        quarantined.write_parquet(quarantine_uri)
    if result.quarantined_share <= spec.max_quarantine_share:
        storage.remove("curated", name)
        if n_accepted:
            accepted.write_parquet(curated_uri, min_rows_per_file=1_000_000)
    return result

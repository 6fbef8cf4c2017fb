"""Declared schemas of landed datasets and the row validation that enforces them.

Validation works on a batch at a time: every value is coerced to its declared type, and every row
that fails a check gets a `_reason` naming each failing field and why. Nothing is dropped: invalid
rows keep their original values as JSON in `_raw`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from slipway.config import StrictModel

REASON = "_reason"
RAW = "_raw"
SOURCE = "_source"

_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ColumnSpec(StrictModel):
    """One declared column: its type and the checks each value must pass."""

    name: str
    type: Literal["string", "int", "float", "bool", "timestamp", "date"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)


class DatasetSchema(StrictModel):
    """The columns of a dataset; columns in the data that are not declared are dropped."""

    columns: list[ColumnSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetSchema:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns declared twice: {dupes}; keep one declaration of each")
        return self

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema of validated rows."""
        return pa.schema([(c.name, _ARROW_TYPES[c.type]) for c in self.columns])


def _is_blank(raw: pd.Series) -> np.ndarray:
    blank = raw.isna().to_numpy()
    if raw.dtype == object:
        blank |= raw.map(lambda v: isinstance(v, str) and v.strip() == "").to_numpy(dtype=bool)
    return blank


def _coerce(spec: ColumnSpec, raw: pd.Series) -> pd.Series:
    """Coerce values to the column type; unparseable values become NA."""
    if spec.type == "int":
        num = pd.to_numeric(raw, errors="coerce")
        whole = num.notna() & (num % 1 == 0)
        return num.where(whole).astype("Int64")
    if spec.type == "float":
        return pd.to_numeric(raw, errors="coerce").astype("Float64")
    if spec.type == "bool":
        if pd.api.types.is_bool_dtype(raw):
            return raw.astype("boolean")
        text = raw.astype("string").str.strip().str.lower()
        return pd.Series(np.where(text.isin(_TRUE), True, np.where(text.isin(_FALSE), False, None)),
                         index=raw.index).astype("boolean")
    if spec.type in ("timestamp", "date"):
        if pd.api.types.is_datetime64_any_dtype(raw):
            ts = raw if raw.dt.tz is not None else raw.dt.tz_localize("UTC")
        else:
            ts = pd.to_datetime(raw.astype("string"), errors="coerce", utc=True, format="ISO8601")
        return ts.dt.normalize() if spec.type == "date" else ts
    return raw.astype("string")


def _checks(spec: ColumnSpec, raw: pd.Series, value: pd.Series, blank: np.ndarray
            ) -> list[tuple[np.ndarray, pd.Series | str]]:
    """(failing mask, message) pairs for one column."""
    name = spec.name
    shown = raw.astype("string").str.slice(0, 60).fillna("")
    out: list[tuple[np.ndarray, pd.Series | str]] = []
    if spec.required:
        out.append((blank, f"{name}: required value is missing"))
    bad_parse = value.isna().to_numpy() & ~blank
    out.append((bad_parse, f"{name}: '" + shown + f"' is not a valid {spec.type}"))
    present = ~value.isna().to_numpy() & ~blank
    if spec.type in ("string",):
        length = value.str.len()
        if spec.min_length is not None:
            out.append((present & (length < spec.min_length).fillna(False).to_numpy(),
                        f"{name}: shorter than {spec.min_length} characters"))
        if spec.max_length is not None:
            out.append((present & (length > spec.max_length).fillna(False).to_numpy(),
                        f"{name}: longer than {spec.max_length} characters"))
    if spec.type in ("int", "float"):
        if spec.min is not None:
            out.append((present & (value < spec.min).fillna(False).to_numpy(),
                        f"{name}: " + shown + f" is below the minimum {spec.min:g}"))
        if spec.max is not None:
            out.append((present & (value > spec.max).fillna(False).to_numpy(),
                        f"{name}: " + shown + f" is above the maximum {spec.max:g}"))
    if spec.allowed is not None:
        ok = value.astype("string").isin(spec.allowed).fillna(False).to_numpy()
        out.append((present & ~ok, f"{name}: '" + shown + f"' is not one of {spec.allowed}"))
    return out


def validate_batch(batch: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """Typed columns plus `_reason` (None when valid) and `_raw` (original values, invalid rows)."""
    n = len(batch)
    reasons = pd.Series([""] * n, index=batch.index, dtype=object)
    out: dict[str, Any] = {}
    for spec in schema.columns:
        raw = batch[spec.name] if spec.name in batch else pd.Series([None] * n, index=batch.index,
                                                                      dtype=object)
        blank = _is_blank(raw)
        value = _coerce(spec, raw)
        for mask, message in _checks(spec, raw, value, blank):
            if mask.any():
                text = message[mask] if isinstance(message, pd.Series) else message
                reasons[mask] = reasons[mask] + "; " + text
        out[spec.name] = value
    failed = (reasons != "").to_numpy()
    result = pd.DataFrame(out, index=batch.index)
    result[REASON] = reasons.str.slice(2).where(failed, None)
    raw_json = pd.Series([None] * n, index=batch.index, dtype=object)
    if failed.any():
        originals = batch[failed].astype(object).where(batch[failed].notna(), None)
        raw_json[failed] = [json.dumps(r, default=str) for r in originals.to_dict("records")]
    result[RAW] = raw_json
    return result


def to_arrow(validated: pd.DataFrame, schema: DatasetSchema, source: pd.Series) -> pa.Table:
    """Arrow table of a validated batch with the declared types plus the bookkeeping columns."""
    arrays = []
    for spec in schema.columns:
        col = validated[spec.name]
        if spec.type == "date":
            col = col.dt.date
        arrays.append(pa.array(col.astype(object).where(col.notna(), None),
                               type=_ARROW_TYPES[spec.type], from_pandas=True))
    arrays += [pa.array(validated[REASON], type=pa.string()),
               pa.array(validated[RAW], type=pa.string()),
               pa.array(source, type=pa.string())]
    names = [c.name for c in schema.columns] + [REASON, RAW, SOURCE]
    return pa.Table.from_arrays(arrays, names=names)

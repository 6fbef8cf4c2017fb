"""Row validation: every invalid value is caught with a reason naming the field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from slipway.data.schema import RAW, REASON, ColumnSpec, DatasetSchema, validate_batch

SCHEMA = DatasetSchema(columns=[
    ColumnSpec(name="user_id", type="int", min=1),
    ColumnSpec(name="ts", type="timestamp"),
    ColumnSpec(name="kind", type="string", allowed=["a", "b"]),
    ColumnSpec(name="ok", type="bool"),
    ColumnSpec(name="dwell", type="float", required=False, min=0, max=100),
])


def test_valid_rows_are_typed_and_unflagged():
    out = validate_batch(pd.DataFrame({"user_id": ["1", "2"], "ts": ["2026-01-01T00:00:00Z",
                                                                     "2026-01-02 10:00"],
                                       "kind": ["a", "b"], "ok": ["true", "0"],
                                       "dwell": ["1.5", ""]}), SCHEMA)
    assert out[REASON].isna().all() and out[RAW].isna().all()
    assert out["user_id"].tolist() == [1, 2]
    assert out["ok"].tolist() == [True, False]
    assert pd.isna(out["dwell"][1])
    assert str(out["ts"].dt.tz) == "UTC"


@pytest.mark.parametrize("column,value,reason", [
    ("user_id", "abc", "user_id: 'abc' is not a valid int"),
    ("user_id", "2.5", "user_id: '2.5' is not a valid int"),
    ("user_id", "0", "user_id: 0 is below the minimum 1"),
    ("user_id", None, "user_id: required value is missing"),
    ("ts", "yesterday", "ts: 'yesterday' is not a valid timestamp"),
    ("kind", "c", "kind: 'c' is not one of ['a', 'b']"),
    ("ok", "maybe", "ok: 'maybe' is not a valid bool"),
    ("dwell", "101", "dwell: 101 is above the maximum 100"),
    ("dwell", "-1", "dwell: -1 is below the minimum 0"),
])
def test_each_invalid_value_is_named(column, value, reason):
    row = {"user_id": "1", "ts": "2026-01-01", "kind": "a", "ok": "1", "dwell": "3"}
    row[column] = value
    out = validate_batch(pd.DataFrame([row]), SCHEMA)
    assert out[REASON][0] == reason
    assert json.loads(out[RAW][0])[column] == value


def test_all_failures_of_a_row_are_listed():
    out = validate_batch(pd.DataFrame([{"user_id": "x", "ts": "bad", "kind": "a", "ok": "1"}]),
                         SCHEMA)
    assert out[REASON][0] == ("user_id: 'x' is not a valid int; "
                              "ts: 'bad' is not a valid timestamp")


def test_duplicate_column_declaration_is_rejected():
    with pytest.raises(ValueError, match="declared twice"):
        DatasetSchema(columns=[ColumnSpec(name="a", type="int"), ColumnSpec(name="a", type="int")])

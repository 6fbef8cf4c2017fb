"""Ingestion with Ray Data: every row read is either accepted or quarantined with a reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from jobs.ingest import IngestConfig
from jobs.ingest import main as ingest
from slipway.config import validate_config
from slipway.errors import SlipwayError

pytestmark = pytest.mark.usefixtures("ray_session")

EVENT_COLUMNS = [
    {"name": "event_id", "type": "int", "min": 1},
    {"name": "user_id", "type": "int", "min": 1},
    {"name": "event_timestamp", "type": "timestamp"},
    {"name": "clicked", "type": "bool"},
    {"name": "dwell_seconds", "type": "float", "min": 0},
]


def config(root: str, datasets: dict) -> IngestConfig:
    return validate_config(IngestConfig, {"storage": {"root": root},
                                          "tracking": {"mode": "disabled"},
                                          "datasets": datasets}, "test")


def land(root: str, name: str, filename: str, text: str) -> None:
    from pathlib import Path

    path = Path(root, "raw", name, filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def quarantine(root: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(f"{root}/quarantine/{name}")


def test_csv_bad_values_and_malformed_lines_are_quarantined_with_reasons(root):
    land(root, "events", "a.csv", "\n".join([
        "event_id,user_id,event_timestamp,clicked,dwell_seconds,extra",
        "1,10,2026-01-01T00:00:00Z,true,3.5,x",
        "2,abc,2026-01-01T00:01:00Z,false,0,x",
        "3,11,not-a-date,false,0,x",
        "4,12,2026-01-01T00:02:00Z,maybe,-1,x",
        "5,13,2026-01-01T00:03:00Z",
        "6,14,2026-01-01T00:04:00Z,1,2.0,x",
    ]) + "\n")
    land(root, "events", "b.csv", "event_id,user_id,event_timestamp,clicked,dwell_seconds\n"
                                  "7,15,2026-01-02,0,0\n")
    cfg = config(root, {"events": {"path": "raw/events", "columns": EVENT_COLUMNS,
                                   "max_quarantine_share": 1.0}})
    result = ingest(cfg)["events"]
    assert (result.read, result.accepted, result.quarantined) == (7, 3, 4)
    assert result.reasons == {"user_id": 1, "event_timestamp": 1, "clicked": 1,
                              "dwell_seconds": 1, "malformed CSV row": 1}
    curated = pd.read_parquet(f"{root}/curated/events").sort_values("event_id")
    assert curated["event_id"].tolist() == [1, 6, 7]
    assert curated["user_id"].dtype == "int64" and curated["clicked"].tolist() == [True, True,
                                                                                  False]
    q = quarantine(root, "events").sort_values("_reason")
    reasons = q["_reason"].tolist()
    assert "user_id: 'abc' is not a valid int" in reasons
    assert "event_timestamp: 'not-a-date' is not a valid timestamp" in reasons
    assert ("clicked: 'maybe' is not a valid bool; dwell_seconds: -1 is below the minimum 0"
            in reasons)
    malformed = q[q["_reason"].str.startswith("malformed CSV row")]
    assert malformed["_raw"].tolist() == ["5,13,2026-01-01T00:03:00Z"]
    assert q["_source"].str.endswith("a.csv").all()
    assert json.loads(q[q["_reason"].str.startswith("user_id")]["_raw"].iloc[0])["user_id"] == "abc"


def test_jsonl_and_parquet_go_through_the_same_checks(root, tmp_path):
    land(root, "users", "u.jsonl", "\n".join([
        json.dumps({"user_id": 1, "country": "US"}),
        json.dumps({"user_id": "2", "country": "XX"}),
        "{not json",
        "[1, 2]",
        json.dumps({"country": "DE"}),
    ]) + "\n")
    columns = [{"name": "user_id", "type": "int"},
               {"name": "country", "type": "string", "allowed": ["US", "DE"]}]
    pd.DataFrame({"user_id": [5, -1], "country": ["DE", "US"]}).to_parquet(
        tmp_path / "users.parquet")
    cfg = config(root, {
        "users": {"path": "raw/users", "columns": columns, "max_quarantine_share": 1.0},
        "more_users": {"path": str(tmp_path / "users.parquet"), "max_quarantine_share": 1.0,
                       "columns": [{"name": "user_id", "type": "int", "min": 1},
                                   {"name": "country", "type": "string"}]},
    })
    results = ingest(cfg)
    assert (results["users"].read, results["users"].accepted) == (5, 1)
    reasons = sorted(quarantine(root, "users")["_reason"])
    assert reasons[0] == "country: 'XX' is not one of ['US', 'DE']"
    assert any(r.startswith("invalid JSON on line 3") for r in reasons)
    assert "line 4 is not a JSON object" in reasons
    assert "user_id: required value is missing" in reasons
    assert (results["more_users"].read, results["more_users"].accepted) == (2, 1)
    assert quarantine(root, "more_users")["_reason"].tolist() == [
        "user_id: -1 is below the minimum 1"]


def test_user_text_dataset_with_quoted_newlines(root):
    land(root, "reviews", "reviews.csv",
         'review,sentiment\n"Great, really great\nsecond line",pos\n"",neg\nMeh,neutral\n')
    cfg = config(root, {"reviews": {"path": "raw/reviews", "max_quarantine_share": 0.7,
                                    "columns": [
                                        {"name": "review", "type": "string", "min_length": 1},
                                        {"name": "sentiment", "type": "string",
                                         "allowed": ["pos", "neg"]}]}})
    result = ingest(cfg)["reviews"]
    assert (result.read, result.accepted, result.quarantined) == (3, 1, 2)
    assert pd.read_parquet(f"{root}/curated/reviews")["review"].tolist() == [
        "Great, really great\nsecond line"]


def test_too_many_bad_rows_fails_and_keeps_last_good_version(root):
    spec = {"path": "raw/users", "max_quarantine_share": 0.2,
            "columns": [{"name": "user_id", "type": "int"}]}
    land(root, "users", "u.csv", "user_id\n1\n2\n3\n")
    ingest(config(root, {"users": spec}))
    land(root, "users", "u.csv", "user_id\n4\nx\ny\n")
    with pytest.raises(SlipwayError, match=r"users: 66.7% quarantined \(2 of 3\) > "
                                        r"max_quarantine_share 20.0%"):
        ingest(config(root, {"users": spec}))
    assert pd.read_parquet(f"{root}/curated/users")["user_id"].tolist() == [1, 2, 3]
    assert len(quarantine(root, "users")) == 2


def test_missing_input_is_a_clear_error(root):
    cfg = config(root, {"events": {"path": "raw/nothing", "columns": EVENT_COLUMNS}})
    with pytest.raises(SlipwayError, match="no files at .*raw/nothing"):
        ingest(cfg)

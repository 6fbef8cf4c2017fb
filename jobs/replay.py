"""Replay past impressions through a registered ranker, writing the prediction log the Serve app
would have written at the time: each impression becomes one `/v1/rank` row stamped with its own
time, with the features as of then (Feast's point-in-time join, where the online store would only
have today's) and the model's score. Use it to backtest monitors on history, or to seed a log.

Request ids are `replay-<event_id>`; labels join the rows later by (user, article, time).
"""

from __future__ import annotations

import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, UtcDatetime
from slipway.features.settings import FeatureStoreSettings
from slipway.features.store import open_store, training_set
from slipway.models.engagement import CATEGORICAL, NUMERIC, features_found
from slipway.models.scoring import predict_proba
from slipway.predictions import json_records, log_row, write_rows
from slipway.registry import Registry
from slipway.storage import Storage
from slipway.tracking import track_run

ROUTE = "/v1/rank"


class ReplayConfig(JobConfig):
    """Which model, which impressions."""

    model_name: str = "engagement"
    ref: str | int = Field(default="champion", description="alias or version number")
    start: UtcDatetime | None = Field(default=None, description="first impression time (UTC)")
    end: UtcDatetime | None = Field(default=None, description="impressions before this time")
    max_events: int | None = Field(default=None, ge=1, description="the earliest N in range")
    feature_store: FeatureStoreSettings = FeatureStoreSettings()


def main(cfg: ReplayConfig) -> int:
    """Score the impressions in range and append their log rows; return the number of rows."""
    storage = Storage(cfg.storage.root)
    with track_run("replay", cfg, storage) as run:
        model, mv = Registry(storage).load(cfg.model_name, cfg.ref)
        events = pd.read_parquet(storage.uri("curated", "events"),
                                 columns=["event_id", "user_id", "article_id", "event_timestamp"])
        events = events.sort_values("event_timestamp", kind="stable")
        if cfg.start:
            events = events[events["event_timestamp"] >= pd.Timestamp(cfg.start)]
        if cfg.end:
            events = events[events["event_timestamp"] < pd.Timestamp(cfg.end)]
        if cfg.max_events:
            events = events.head(cfg.max_events)
        if events.empty:
            raise JobFailed(f"no curated events between {cfg.start} and {cfg.end}; widen the "
                            "range (start/end) or run jobs.ingest")
        rows = training_set(open_store(cfg.feature_store, storage), events)
        rows = rows.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
        scores = predict_proba(model, mv, rows)
        features = rows[["user_id", "article_id", *NUMERIC, *CATEGORICAL]]
        found = features_found(features)
        log = [log_row(f"replay-{event_id}", ts.to_pydatetime(), ROUTE, "replay", mv.name,
                       mv.version, [record],
                       [{"article_id": record["article_id"], "score": float(score),
                         "features_found": bool(ok)}], 0.0)
               for event_id, ts, record, score, ok in zip(
                   rows["event_id"], rows["event_timestamp"], json_records(features), scores, found,
                   strict=True)]
        files = write_rows(storage, log, f"replay-{run.run_id}")
        run.log({"rows": len(log), "files": files})
    print(f"replayed {len(log):,} impressions through {mv.name} v{mv.version} into "
          f"{storage.uri('predictions')} ({files} files)")
    return len(log)


if __name__ == "__main__":
    run_job(ReplayConfig, main, __doc__)

"""The rows monitors compare: a reference and the current serving windows, with labels joined.

Rows have the item's inputs (features, or `text`), `prediction` (a score for a binary model, a
label name for a multiclass one, then with `confidence`), `timestamp`, and `label` once known.
The reference is a split of the model's training data scored by the model (the held-out test
split by default, so its performance is the model's evaluation), or a window of the log itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from slipway.config import Duration, StrictModel, UtcDatetime
from slipway.models.scoring import predict_labels, predict_proba
from slipway.registry import Registry
from slipway.storage import Storage

META = ("timestamp", "request_id", "model_version", "position", "prediction", "confidence",
        "label", "label_name", "event_timestamp", "length")


class ReferenceSettings(StrictModel):
    """What the current windows are compared with."""

    kind: Literal["training", "window"] = "training"
    split: Literal["train", "valid", "test"] = Field(
        default="test", description="training: the split of the served version's data")
    start: UtcDatetime | None = Field(default=None, description="window: first logged time")
    end: UtcDatetime | None = Field(default=None, description="window: logged before this time; "
                                 "current windows start here")
    max_rows: int = Field(default=20_000, ge=10, description="random sample of the reference")

    @model_validator(mode="after")
    def _window_has_end(self) -> ReferenceSettings:
        if self.kind == "window" and self.end is None:
            raise ValueError("reference.end is required with kind: window (the time the "
                             "reference window ends and the current windows start)")
        return self


class WindowSettings(StrictModel):
    """How the current rows are cut into windows."""

    by: Literal["time", "count"] = "time"
    size: str = Field(default="1D", description="time: a pandas frequency such as 1h or 1D")
    rows: int = Field(default=1000, ge=10, description="count: rows per window")
    last: int | None = Field(default=30, ge=1, description="evaluate only the latest windows")
    min_rows: int = Field(default=50, ge=2, description="smaller windows are not tested")

    @model_validator(mode="after")
    def _size_parses(self) -> WindowSettings:
        try:
            pd.tseries.frequencies.to_offset(self.size)
        except ValueError as exc:
            raise ValueError(f"windows.size {self.size!r} is not a pandas frequency; "
                             "use e.g. 15min, 1h or 1D") from exc
        return self


class LabelSettings(StrictModel):
    """Where delayed labels come from and how they join served rows."""

    path: str = Field(default="curated/events", description="Parquet folder under the root")
    keys: list[str] = Field(default_factory=lambda: ["user_id", "article_id"], min_length=1)
    label: str = "clicked"
    time: str | None = Field(default="event_timestamp",
                             description="label time; None joins on the keys alone")
    horizon: Duration = Field(default=timedelta(hours=1),
                               description="a label counts if at most this long after serving")


def prediction_columns(proba: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """`prediction` (and `confidence`) as the prediction log stores them."""
    if proba.ndim == 1:
        return {"prediction": proba.astype(float)}
    return {"prediction": np.asarray(predict_labels(proba, labels), dtype=object),
            "confidence": proba.max(axis=1)}


def training_reference(registry: Registry, model_name: str, version: int,
                       settings: ReferenceSettings, seed: int = 0) -> pd.DataFrame:
    """A split of the version's data, scored by that version."""
    model, mv = registry.load(model_name, version)
    frame = pd.read_parquet(f"{mv.metadata['splits_uri']}/{settings.split}.parquet")
    if len(frame) > settings.max_rows:
        frame = frame.sample(settings.max_rows, random_state=seed)
    frame = frame.reset_index(drop=True)
    cols = prediction_columns(predict_proba(model, mv, frame), mv.metadata["labels"])
    out = frame.assign(**cols)
    if "label_name" in out:  # text: labels by name, as the classifier answers
        out["label"] = out.pop("label_name")
    if "event_timestamp" in out:
        out["timestamp"] = out["event_timestamp"]
    return out


def join_labels(rows: pd.DataFrame, storage: Storage, settings: LabelSettings) -> pd.DataFrame:
    """`rows` with `label` where a label arrived within the horizon (NaN where not yet)."""
    missing = [k for k in settings.keys if k not in rows]
    if missing:
        raise ValueError(f"labels.keys {missing} are not columns of the served rows; they have "
                         f"{sorted(rows.columns)}")
    columns = [*settings.keys, settings.label] + ([settings.time] if settings.time else [])
    labels = pd.read_parquet(storage.uri(*settings.path.split("/")), columns=columns)
    labels = labels.rename(columns={settings.label: "label"})
    out = rows.drop(columns=["label"], errors="ignore")
    if settings.time is None:
        return out.merge(labels.drop_duplicates(settings.keys), on=settings.keys, how="left")
    labels = labels.rename(columns={settings.time: "_label_time"}).sort_values("_label_time")
    labels["_label_time"] = pd.to_datetime(labels["_label_time"], utc=True).astype(
        "datetime64[ms, UTC]")
    out["_order"] = np.arange(len(out))
    left = out.sort_values("timestamp")
    left["timestamp"] = pd.to_datetime(left["timestamp"], utc=True).astype("datetime64[ms, UTC]")
    for key in settings.keys:
        labels[key] = labels[key].astype(left[key].dtype)
    joined = pd.merge_asof(left, labels, left_on="timestamp", right_on="_label_time",
                           by=settings.keys, direction="forward", tolerance=settings.horizon)
    return joined.sort_values("_order").drop(columns=["_order", "_label_time"]).reset_index(
        drop=True)


def windows(rows: pd.DataFrame, settings: WindowSettings) -> list[pd.DataFrame]:
    """The latest `settings.last` windows of `rows` (sorted by time, index kept), oldest
    first. Count windows are cut back from the newest row, so the latest one is full."""
    rows = rows.sort_values("timestamp", kind="stable")
    if settings.by == "time":
        groups = [g for _, g in rows.groupby(pd.Grouper(key="timestamp", freq=settings.size))]
    else:
        back = (len(rows) - 1 - np.arange(len(rows))) // settings.rows
        groups = [g for _, g in rows.groupby(back)][::-1]
    groups = [g for g in groups if len(g)]
    return groups[-settings.last:] if settings.last else groups


def feature_columns(reference: pd.DataFrame, current: pd.DataFrame, include: list[str] | None,
                    exclude: list[str]) -> list[str]:
    """Columns to test: `include` if given, else those in both frames but meta, text and ids."""
    if include:
        missing = sorted(set(include) - set(reference.columns) - set(current.columns))
        if missing:
            raise ValueError(f"drift.features {missing} are not in the served rows; they have "
                             f"{sorted(current.columns)}")
        return include
    shared = [c for c in current.columns if c in reference.columns]
    return [c for c in shared if c not in META and c != "text" and c not in exclude]

"""The engagement (click) task: impressions labelled clicked or not, with point-in-time features.

Labels are impressions from the curated events; features come from the `engagement` feature
service as of each impression's time. Examples are split by time: train, then validation, then a
held-out test split that only `jobs.evaluate` reads.
"""

from __future__ import annotations

import pandas as pd
from pydantic import Field

from slipway.config import StrictModel, UtcDatetime
from slipway.errors import SlipwayError
from slipway.features.columns import VIEW_COLUMNS
from slipway.features.settings import FeatureStoreSettings
from slipway.models.engagement import EngagementMLP, Preprocessor
from slipway.storage import Storage
from slipway.train.trainer import Prepared, to_dataset


class EngagementData(StrictModel):
    """Where the engagement examples come from."""

    max_examples: int | None = Field(default=50_000, ge=100,
                                     description="random sample of impressions; None: all")
    until: UtcDatetime | None = Field(default=None, description="only impressions before this time "
                                   "(UTC), e.g. to train as of a date for a backtest")
    feature_store: FeatureStoreSettings = FeatureStoreSettings()


def load_examples(data: EngagementData, storage: Storage, seed: int) -> pd.DataFrame:
    """Impressions with their point-in-time features, oldest first."""
    from slipway.features.store import open_store, training_set  # Feast: about 5 s to import

    uri = storage.uri("curated", "events")
    if not storage.list_files("curated", "events"):
        raise SlipwayError(f"no curated events under {uri}; run jobs.ingest and jobs.features")
    labels = pd.read_parquet(uri, columns=["user_id", "article_id", "event_timestamp",
                                           "clicked"])
    if data.until is not None:
        labels = labels[labels["event_timestamp"] < pd.Timestamp(data.until)]
    if data.max_examples and len(labels) > data.max_examples:
        labels = labels.sample(data.max_examples, random_state=seed)
    labels = labels.rename(columns={"clicked": "label"})
    labels["label"] = labels["label"].astype("int64")
    examples = training_set(open_store(data.feature_store, storage), labels)
    return examples.sort_values(["event_timestamp", "user_id", "article_id"]).reset_index(
        drop=True)


def split_by_time(df: pd.DataFrame, valid: float, test: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Oldest rows train, then validation, newest are the held-out test split."""
    n = len(df)
    a, b = int(n * (1 - valid - test)), int(n * (1 - test))
    return df.iloc[:a], df.iloc[a:b], df.iloc[b:]


def prepare(data: EngagementData, storage: Storage, seed: int, valid: float, test: float
            ) -> Prepared:
    """Examples from the feature store, split by time, standardised by the train split."""
    examples = load_examples(data, storage, seed)
    train, valid_df, test_df = split_by_time(examples, valid, test)
    if train["label"].nunique() < 2 or valid_df["label"].nunique() < 2:
        raise SlipwayError("training or validation split has a single class; use more data "
                        "(engagement.max_examples) or another time range")
    prep = Preprocessor.fit(train)
    return Prepared(
        task="engagement", model_cls=EngagementMLP, arch_params={"in_features": prep.width},
        inputs=["x"],
        datasets={name: to_dataset({"x": prep.transform(part), "y": part["label"].to_numpy()})
                  for name, part in (("train", train), ("valid", valid_df))},
        splits={"train": train, "valid": valid_df, "test": test_df},
        metadata={"preprocessing": prep.to_dict(), "labels": ["no click", "click"]},
        data_versions={f"features/{view}": storage.version("features", view)
                       for view in VIEW_COLUMNS},
    )

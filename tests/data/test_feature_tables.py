"""The platform pipeline's feature tables (jobs.features on Ray Data, over the world it generated
and ingested) against a single-process pandas reference and a brute force over the events. A
module of its own: it waits for the platform root, the other feature tests do not."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.features import pandas_features


def test_the_platforms_generated_data_flows_to_features_that_match_pandas(platform_root,
                                                                          tmp_path):
    """The platform pipeline generated, ingested and featurized its world (jobs.features on Ray
    Data, W&B offline): the engagement tables equal a single-process pandas reference and a
    brute force over the curated events, and the run is tracked."""
    root = platform_root
    manifests = [json.loads(Path(p).read_text())
                 for p in glob.glob(f"{root}/runs/features/*.json")]
    assert len(manifests) == 1 and manifests[0]["status"] == "succeeded"
    rows = manifests[0]["metrics"]
    # The generator corrupted `bad_row_fraction` of the rows it wrote as text (its run's config):
    # ingestion quarantined exactly those, and the features read what it accepted.
    [generated] = [json.loads(Path(p).read_text())
                   for p in glob.glob(f"{root}/runs/generate/*.json")]
    [ingested] = [json.loads(Path(p).read_text())["metrics"]
                  for p in glob.glob(f"{root}/runs/ingest/*.json")]
    for name, size in (("events", "num_events"), ("users", "num_users")):
        corrupted = generated["config"]["outputs"][name]["bad_row_fraction"]
        assert corrupted > 0 and ingested[f"{name}/read"] == generated["config"]["generator"][size]
        assert ingested[f"{name}/quarantined"] == round(corrupted * ingested[f"{name}/read"])
    assert rows["article_text/rows"] == len(pd.read_parquet(f"{root}/curated/articles"))
    assert rows["user_profile/rows"] == len(pd.read_parquet(f"{root}/curated/users"))

    reference = pandas_features(f"{root}/curated/events", str(tmp_path / "reference"))
    events = pd.read_parquet(f"{root}/curated/events")
    for kind in ("user", "article"):
        key = f"{kind}_id"
        ray_df = pd.read_parquet(f"{root}/features/{kind}_engagement")
        ray_df = ray_df.sort_values([key, "event_timestamp"]).reset_index(drop=True)
        ref_df = pd.read_parquet(f"{tmp_path}/reference/features/{kind}.parquet")
        ref_df = ref_df.sort_values([key, "event_timestamp"]).reset_index(drop=True)
        assert len(ray_df) == reference[kind] == rows[f"{kind}_engagement/rows"]
        pd.testing.assert_frame_equal(ray_df, ref_df[ray_df.columns], check_dtype=False)
        check_against_brute_force(ray_df, events, kind)

    # Every job run is tracked: a manifest with code and data versions, and a W&B run.
    assert {"curated/events", "features/user_engagement"} <= set(manifests[0]["data_versions"])
    assert len(manifests[0]["git_sha"]) == 40
    run_id = manifests[0]["run_id"]
    assert glob.glob(f"{root}/wandb/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")


def check_against_brute_force(features: pd.DataFrame, events: pd.DataFrame, kind: str) -> None:
    """Recompute 60 sampled snapshot rows straight from the events, one filter per window: the
    events of that entity in the w days before the snapshot's midnight."""
    key = f"{kind}_id"
    day = pd.Timedelta(days=1)
    sample = features.sample(60, random_state=0)
    assert sample[f"{kind}_clicks_30d"].gt(0).sum() > 20  # the sample exercises the means
    for _, row in sample.iterrows():
        mine = events[events[key] == row[key]]
        before = mine[mine["event_timestamp"] < row["event_timestamp"]]
        for w in (1, 7, 30):
            window = before[before["event_timestamp"] >= row["event_timestamp"] - w * day]
            clicks = int(window["clicked"].sum())
            assert row[f"{kind}_impressions_{w}d"] == len(window), (row[key], w)
            assert row[f"{kind}_clicks_{w}d"] == clicks, (row[key], w)
            assert row[f"{kind}_ctr_{w}d"] == pytest.approx((clicks + 1) / (len(window) + 5))
            dwell = window.loc[window["clicked"], "dwell_seconds"].mean() if clicks else 0.0
            assert row[f"{kind}_dwell_mean_{w}d"] == pytest.approx(dwell), (row[key], w)
        since = row[f"{kind}_days_since_last_event"]
        if before.empty:
            assert pd.isna(since)
        else:
            gap = (row["event_timestamp"] - before["event_timestamp"].max()) / day
            assert since == pytest.approx(gap)

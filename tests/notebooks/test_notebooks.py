"""The researchers' notebooks run top to bottom (papermill, this venv's kernel) attached to the
test session's Ray, over the platform root, with their long cells shortened by parameters. Each
ends with a summary of what it found; the tests recompute those values apart from the notebook.
The experiment notebook's tuning run is also the test of `jobs.tune`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import papermill as pm
import pytest
from sklearn.metrics import roc_auc_score

from slipway.features.columns import STREAM_COLUMNS
from slipway.features.definitions import VIEW_FIELDS
from slipway.models.scoring import predict_proba
from slipway.registry import Registry
from slipway.storage import Storage


def run(name: str, tmp_path, **parameters) -> tuple[list[str], dict]:
    """Execute notebooks/<name>; its cells' text outputs and its closing summary (a failing cell
    fails here)."""
    out = pm.execute_notebook(f"notebooks/{name}", str(tmp_path / name), parameters=parameters,
                              kernel_name="python3", progress_bar=False, cwd=".")
    outputs = [o for cell in out.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    texts = ["".join(o.get("text", "")) + o.get("data", {}).get("text/plain", "")
             for o in outputs]
    summary = outputs[-1]["data"]["application/json"]
    return texts, summary


@pytest.fixture(scope="module")
def attach(ray_session) -> dict:
    return {"ray_address": ray_session.address_info["address"]}


def test_features_notebook_joins_and_plots_the_store(platform_root, attach, tmp_path):
    outputs, summary = run("01_features.ipynb", tmp_path, root=platform_root,
                           sample_events=2000, **attach)
    assert summary["views"] == sorted([*VIEW_FIELDS, *STREAM_COLUMNS])
    assert sum("<Figure" in o for o in outputs) >= 2  # the plots were drawn
    # The same 2,000 impressions (the notebook's seeded sample), clicks and click-through rate
    # by topic recomputed from the curated tables: the join kept every row and its label.
    events = pd.read_parquet(f"{platform_root}/curated/events",
                             columns=["user_id", "article_id", "event_timestamp", "clicked"])
    sample = events.sample(2000, random_state=0)
    topics = pd.read_parquet(f"{platform_root}/curated/articles", columns=["article_id", "topic"])
    ctr = sample.merge(topics, on="article_id").groupby("topic")["clicked"].mean()
    assert summary["rows"] == 2000 and summary["clicked"] == int(sample["clicked"].sum())
    assert summary["ctr_by_topic"] == pytest.approx(ctr.to_dict())
    # The online store holds the user's newest daily snapshot from the offline table.
    online = summary["online"]
    table = pd.read_parquet(f"{platform_root}/features/user_engagement")
    newest = table[table["user_id"] == online["user_id"]].sort_values("event_timestamp").iloc[-1]
    assert online["user_impressions_7d"] == newest["user_impressions_7d"]
    assert online["user_ctr_7d"] == pytest.approx(newest["user_ctr_7d"])


def test_experiment_notebook_tunes_and_compares_with_the_champion(platform_root, attach,
                                                                   tmp_path):
    _, summary = run("02_experiment.ipynb", tmp_path, root=platform_root, trials=2, epochs=1,
                     max_examples=2000, tracking="disabled", **attach)
    registry = Registry(Storage(platform_root))
    assert summary["trials"] == 2
    assert summary["champion_version"] == registry.aliases("engagement")["champion"]
    # Tune (Optuna + ASHA, each trial a Ray Train run) registered its best trial as challenger,
    # with the trial's settings, and the model has the architecture those settings name.
    challenger = registry.get("engagement", "challenger")
    assert challenger.version == summary["challenger_version"]
    assert challenger.metadata["trial_params"] == summary["best_params"]
    assert set(summary["best_params"]) == {"lr", "hidden", "dropout"}
    assert challenger.metrics["valid_roc_auc"] == pytest.approx(summary["best_trial_roc_auc"])
    model, _ = registry.load("engagement", "challenger")
    assert model.net[0].out_features == summary["best_params"]["hidden"][0]
    # Both ROC-AUCs recomputed with scikit-learn on the challenger's held-out rows.
    test = pd.read_parquet(f"{challenger.metadata['splits_uri']}/test.parquet")
    for side in ("challenger", "champion"):
        model, mv = registry.load("engagement", summary[f"{side}_version"])
        auc = roc_auc_score(test["label"], np.asarray(predict_proba(model, mv, test)))
        assert summary["roc_auc"][side] == pytest.approx(auc), side

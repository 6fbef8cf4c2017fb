"""Training the engagement model on Ray Train over the platform root's features: metrics,
checkpoints, quality against baselines and the true click model, resuming, reproducibility,
the promotion gate, rollback, and W&B logging. (Tuning runs in the experiment notebook's test;
a worker group lost mid-run and replaced runs in tests/cluster/test_multinode.py.)"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.platform import SMALL
from jobs.generate import GenerateConfig
from jobs.promote import PromoteConfig
from jobs.promote import main as promote_job
from jobs.train import TrainConfig
from jobs.train import main as train_job
from slipway.config import load_config
from slipway.data.generate import generate
from slipway.errors import SlipwayError
from slipway.models.engagement import Preprocessor
from slipway.models.scoring import predict_proba
from slipway.registry import Registry
from slipway.storage import Storage
from tests.wandb_files import run_records

pytestmark = pytest.mark.usefixtures("ray_session")


def train_config(root: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/train_engagement.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "engagement.max_examples=null",
        "model.epochs=5", "trainer.keep_checkpoints=null", *extra])


@pytest.fixture(scope="module")
def trained(platform_root):
    """Every impression of the platform's world, two workers, five epochs."""
    return train_job(train_config(platform_root, "model_name=clicks"))


@pytest.fixture(scope="module")
def again(platform_root, trained):
    """The same training run again: version 2 of `clicks`."""
    return train_job(train_config(platform_root, "model_name=clicks"))


def test_two_worker_run_reports_metrics_checkpoints_and_registers(platform_root, trained):
    history = trained.history
    registry = Registry(Storage(platform_root))
    model, mv = registry.load("clicks", "challenger")
    meta = mv.metadata
    examples = meta["examples"]
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4]
    # Each of the two workers saw half of the training split (Ray Data shards).
    assert history["train_samples"].iloc[0] == pytest.approx(examples["train"] / 2, abs=1)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert os.path.isdir(meta["checkpoint_uri"])
    assert mv.version == trained.version.version == 1
    labelled = len(pd.read_parquet(f"{platform_root}/curated/events"))
    assert sum(examples.values()) == labelled  # no impression dropped by the point-in-time join
    assert examples["valid"] == int(labelled * 0.85) - int(labelled * 0.7)  # split by time
    assert examples["test"] == labelled - int(labelled * 0.85)
    assert {"features/user_engagement", "features/article_text"} <= set(meta["data_versions"])
    assert meta["metrics"]["valid_roc_auc"] == pytest.approx(history["valid_roc_auc"].iloc[-1])
    assert meta["task"] == "engagement" and meta["labels"] == ["no click", "click"]
    test = pd.read_parquet(f"{meta['splits_uri']}/test.parquet")
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(
            Preprocessor(**meta["preprocessing"]).transform(test)))).numpy()
    assert scores.shape == (examples["test"],)
    # The registered weights are the model the loader scores with.
    assert np.allclose(scores, predict_proba(model, mv, test), atol=1e-6)


def test_the_model_beats_simple_baselines_and_nears_the_true_click_model(platform_root,
                                                                         trained):
    """The world's true click probabilities are known (the generator's hidden column): the
    oracle ranks held-out impressions as well as anything can. The model must beat ranking by
    popularity or by the user's propensity alone, and get half of the oracle's lift over
    chance."""
    mv = trained.version
    test = pd.read_parquet(f"{mv.metadata['splits_uri']}/test.parquet")
    world = generate(load_config(GenerateConfig, "configs/generate.yaml",
                                 SMALL["generate"]).generator).events
    keys = ["user_id", "article_id", "event_timestamp"]
    truth = test[keys].merge(world[[*keys, "_click_probability"]], on=keys, how="left")
    assert truth["_click_probability"].notna().all()
    y = test["label"]
    model, _ = Registry(Storage(platform_root)).load("clicks", mv.version)
    auc = roc_auc_score(y, predict_proba(model, mv, test))
    oracle = roc_auc_score(y, truth["_click_probability"])
    baselines = {f: roc_auc_score(y, test[f].fillna(0)) for f in
                 ("article_ctr_7d", "article_ctr_30d", "user_ctr_7d", "user_ctr_30d")}
    print(f"held-out ROC-AUC: model {auc:.3f}, oracle {oracle:.3f}, baselines {baselines}")
    assert auc > max(baselines.values()) + 0.01, (auc, baselines)
    assert (auc - 0.5) / (oracle - 0.5) > 0.5, (auc, oracle)


def test_a_stopped_run_is_finished_by_resume_run_from_its_last_checkpoint(platform_root):
    small = ["model_name=resumed", "resume_run=resumed-run", "trainer.num_workers=1",
             "engagement.max_examples=2000", "model.epochs=3"]
    with pytest.raises(SlipwayError, match="training run resumed-run failed"):
        train_job(train_config(platform_root, *small, "fail_at_epoch=1",
                               "trainer.max_failures=0"))
    assert not Registry(Storage(platform_root)).versions("resumed")  # nothing registered
    result = train_job(train_config(platform_root, *small))
    # Epoch 0 was checkpointed before the failure (its report is in the run's history); the
    # resumed run started from that checkpoint and trained epochs 1 and 2 only.
    assert result.run_name == "resumed-run"
    history = result.history
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["start_epoch"].tolist() == [0, 1, 1]
    assert Registry(Storage(platform_root)).get("resumed", "challenger").version == 1


def test_evaluation_on_held_out_split_writes_report_and_plots(platform_root, trained):
    from jobs.evaluate import EvaluateConfig
    from jobs.evaluate import main as evaluate_job

    cfg = load_config(EvaluateConfig, None, [f"storage.root={platform_root}",
                                             "tracking.mode=disabled", "model_name=clicks"])
    ev = evaluate_job(cfg)
    test = pd.read_parquet(f"{trained.version.metadata['splits_uri']}/test.parquet")
    model, mv = Registry(Storage(platform_root)).load("clicks", trained.version.version)
    proba = predict_proba(model, mv, test)
    assert ev.version.version == trained.version.version and ev.against is None
    assert ev.metrics["roc_auc"] == pytest.approx(roc_auc_score(test["label"], proba))
    assert ev.metrics["accuracy"] == pytest.approx(np.mean((proba > 0.5) == test["label"]))
    mobile = test["user_device"] == "mobile"
    by_slice = {s["slice"]: s for s in ev.slices}
    assert by_slice["user_device=mobile"]["size"] == int(mobile.sum())
    assert by_slice["user_device=mobile"]["roc_auc"] == pytest.approx(
        roc_auc_score(test["label"][mobile], proba[mobile.to_numpy()]))
    folder = os.path.dirname(ev.report_uri)
    assert sorted(os.listdir(folder)) == ["confusion.png", "reliability.png", "report.json"]


def test_promotion_gate_accepts_then_refuses_without_margin(platform_root, trained):
    common = [f"storage.root={platform_root}", "tracking.mode=disabled", "model_name=clicks"]
    assert promote_job(load_config(PromoteConfig, None, [*common, "min_value=0.0"])) == 1
    registry = Registry(Storage(platform_root))
    assert registry.aliases("clicks")["champion"] == 1
    # The same version again cannot beat itself by the margin: refused, champion unchanged.
    with pytest.raises(SlipwayError,
                       match="not promoted: challenger v1 roc_auc .* vs champion v1"):
        promote_job(load_config(PromoteConfig, None, common))
    assert registry.aliases("clicks")["champion"] == 1


def test_same_config_and_data_give_the_same_metrics(trained, again):
    cols = ["train_loss", "valid_loss", "valid_roc_auc"]
    first, second = trained.history[cols].to_numpy(), again.history[cols].to_numpy()
    assert first.shape == second.shape
    assert abs(first - second).max() < 1e-5


def test_rollback_moves_the_champion_back_to_the_version_before(platform_root, trained, again):
    registry = Registry(Storage(platform_root))
    registry.set_alias("clicks", "champion", trained.version.version, "test")
    registry.set_alias("clicks", "champion", again.version.version, "test")
    back = promote_job(load_config(PromoteConfig, None, [
        f"storage.root={platform_root}", "tracking.mode=disabled", "model_name=clicks",
        "rollback=true"]))
    assert back == trained.version.version == registry.aliases("clicks")["champion"]
    _, loaded = registry.load("clicks", "champion")
    assert loaded.version == trained.version.version
    history = registry.storage.read_json("models", "clicks", "aliases.json")["history"]
    assert history[-1]["reason"] == "rollback"


def test_rank_zero_logs_the_run_to_wandb_with_checkpoint_artifact(platform_root):
    # The platform pipeline trained the engagement champion with W&B offline.
    mv = Registry(Storage(platform_root)).get("engagement", 1)
    run_id = mv.metadata["parent_run"]
    by_kind = run_records(platform_root, run_id)
    epochs = [{tuple(i.nested_key) or (i.key,): i.value_json for i in h.history.item}
              for h in by_kind["history"]]
    assert [e[("epoch",)] for e in epochs] == ["0"]  # one epoch, one worker: rank 0's record
    assert float(epochs[0][("valid_roc_auc",)]) == pytest.approx(mv.metrics["valid_roc_auc"])
    config = {i.key for i in by_kind["run"][0].run.config.update}
    assert {"git_sha", "data_versions", "model", "engagement"} <= config
    assert [a.artifact.name for a in by_kind["artifact"]] == [f"{run_id}-checkpoint"]

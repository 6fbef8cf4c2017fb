"""Training the engagement model on Ray Train: metrics, checkpoints, fault tolerance, registry."""

from __future__ import annotations

import os

import pytest
import torch

from jobs.features import FeaturesConfig
from jobs.features import main as features_job
from jobs.generate import GenerateConfig
from jobs.generate import main as generate_job
from jobs.ingest import IngestConfig
from jobs.ingest import main as ingest_job
from jobs.train import TrainConfig
from jobs.train import main as train_job
from slipway.config import load_config
from slipway.models.engagement import Preprocessor
from slipway.registry import Registry
from slipway.storage import Storage
from tests.wandb_files import run_records

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def feature_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("train") / "root")
    common = [f"storage.root={root}", "tracking.mode=disabled"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml", [
        *common, "generator.num_events=8000", "generator.num_users=300",
        "generator.num_articles=150", "generator.days=20"]))
    ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    features_job(load_config(FeaturesConfig, "configs/features.yaml", common))
    return root


def train_config(root: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/train_engagement.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "engagement.max_examples=2500",
        "model.epochs=3", "trainer.keep_checkpoints=null", *extra])


@pytest.fixture(scope="module")
def trained(feature_root):
    return train_job(train_config(feature_root, "model_name=clicks"))


def test_two_worker_run_reports_metrics_checkpoints_and_registers(feature_root, trained):
    result = trained
    history = result.history
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["train_samples"].iloc[0] == pytest.approx(2500 * 0.7 / 2, abs=2)
    assert history["valid_roc_auc"].between(0, 1).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert os.path.isdir(result.version.metadata["checkpoint_uri"])

    registry = Registry(Storage(feature_root))
    model, mv = registry.load("clicks", "challenger")
    assert mv.version == result.version.version == 1
    meta = mv.metadata
    assert meta["examples"] == {"train": 1750, "valid": 375, "test": 375}
    assert {"features/user_engagement", "features/article_text"} <= set(meta["data_versions"])
    assert meta["metrics"]["valid_roc_auc"] == pytest.approx(history["valid_roc_auc"].iloc[-1])
    assert meta["task"] == "engagement" and meta["labels"] == ["no click", "click"]
    prep = Preprocessor(**meta["preprocessing"])
    import pandas as pd

    test = pd.read_parquet(f"{meta['splits_uri']}/test.parquet")
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(prep.transform(test))))
    assert scores.shape == (375,) and 0 < float(scores.mean()) < 1


def test_worker_failure_is_survived_by_resuming_from_checkpoint(feature_root):
    result = train_job(train_config(feature_root, "model_name=drill", "fail_at_epoch=2",
                                    "trainer.max_failures=1"))
    marker = os.path.join(feature_root, "checkpoints", f"{result.run_name}.failed")
    assert os.path.exists(marker), "the injected failure did not happen"
    # The replacement worker group resumed after epoch 1's checkpoint: epochs 0 and 1 were
    # trained once, not again from scratch.
    assert sorted(result.history["epoch"].tolist()) == [0, 1, 2]
    assert Registry(Storage(feature_root)).get("drill", "challenger").version == 1


def test_evaluation_on_held_out_split_writes_report_and_plots(feature_root, trained):
    from jobs.evaluate import EvaluateConfig
    from jobs.evaluate import main as evaluate_job

    cfg = load_config(EvaluateConfig, None, [f"storage.root={feature_root}",
                                             "tracking.mode=disabled", "model_name=clicks"])
    ev = evaluate_job(cfg)
    assert ev.version.version == trained.version.version
    assert set(ev.metrics) >= {"accuracy", "precision", "recall", "macro_f1", "roc_auc",
                               "log_loss", "ece"}
    assert 0 <= ev.metrics["ece"] <= 1 and ev.against is None
    slices = {s["slice"] for s in ev.slices}
    assert {"user_device=mobile", "article_topic=science"} <= slices
    folder = os.path.dirname(ev.report_uri)
    assert sorted(os.listdir(folder)) == ["confusion.png", "reliability.png", "report.json"]


def test_promotion_gate_accepts_then_refuses_without_margin(feature_root, trained):
    from jobs.promote import PromoteConfig
    from jobs.promote import main as promote_job
    from slipway.cli import JobFailed

    common = [f"storage.root={feature_root}", "tracking.mode=disabled", "model_name=clicks"]
    assert promote_job(load_config(PromoteConfig, None, [*common, "min_value=0.0"])) == 1
    registry = Registry(Storage(feature_root))
    assert registry.aliases("clicks")["champion"] == 1
    # The same version again cannot beat itself by the margin: refused, champion unchanged.
    with pytest.raises(JobFailed, match="not promoted: challenger v1 roc_auc .* vs champion v1"):
        promote_job(load_config(PromoteConfig, None, common))
    assert registry.aliases("clicks")["champion"] == 1


def test_same_config_and_data_give_the_same_metrics(feature_root, trained):
    again = train_job(train_config(feature_root, "model_name=clicks_again"))
    cols = ["train_loss", "valid_loss", "valid_roc_auc"]
    first, second = trained.history[cols].to_numpy(), again.history[cols].to_numpy()
    assert first.shape == second.shape
    assert abs(first - second).max() < 1e-5


def test_rank_zero_logs_the_run_to_wandb_with_checkpoint_artifact(feature_root):
    result = train_job(train_config(feature_root, "model_name=logged", "tracking.mode=offline",
                                    "model.epochs=2"))
    run_id = result.version.metadata["parent_run"]
    by_kind = run_records(feature_root, run_id)
    epochs = [{tuple(i.nested_key) or (i.key,): i.value_json for i in h.history.item}
              for h in by_kind["history"]]
    assert [e[("epoch",)] for e in epochs] == ["0", "1"]
    assert all(("valid_roc_auc",) in e for e in epochs)
    config = {i.key for i in by_kind["run"][0].run.config.update}
    assert {"git_sha", "data_versions", "model", "engagement"} <= config
    assert [a.artifact.name for a in by_kind["artifact"]] == [f"{run_id}-checkpoint"]


def test_tuning_runs_trials_and_registers_the_best(feature_root):
    from jobs.tune import TuneJobConfig
    from jobs.tune import main as tune_job

    cfg = load_config(TuneJobConfig, "configs/tune_engagement.yaml", [
        f"storage.root={feature_root}", "tracking.mode=disabled", "model_name=tuned",
        "engagement.max_examples=1500", "model.epochs=2", "tune.num_samples=3"])
    result = tune_job(cfg)
    assert len(result.trials) == 3
    assert set(result.best_params) == {"lr", "hidden", "dropout"}
    assert result.best_params["hidden"] in ([32], [64, 32], [128, 64])
    best = result.trials["valid_roc_auc"].max()
    mv = Registry(Storage(feature_root)).get("tuned", "challenger")
    assert mv.metrics["valid_roc_auc"] == pytest.approx(best)
    assert mv.metadata["trial_params"] == result.best_params
    model, _ = Registry(Storage(feature_root)).load("tuned", "challenger")
    assert model.net[0].out_features == result.best_params["hidden"][0]

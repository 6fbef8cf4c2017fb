"""Two generated worlds run through the real jobs (generate, ingest, features, train, replay):
identical up to 2026-02-07, then one gets feature drift (dwell times x2.5) and the other concept
drift (the click relation changes: device effects and the favourite-topic effect). The engagement
model is trained on impressions before the drift, once, and shared by both."""

from __future__ import annotations

import shutil

import pytest

from jobs.features import FeaturesConfig
from jobs.features import main as features_job
from jobs.generate import GenerateConfig
from jobs.generate import main as generate_job
from jobs.ingest import IngestConfig
from jobs.ingest import main as ingest_job
from jobs.replay import ReplayConfig
from jobs.replay import main as replay_job
from jobs.train import TrainConfig
from jobs.train import main as train_job
from slipway.config import load_config
from slipway.registry import Registry
from slipway.storage import Storage

DRIFT_START = "2026-02-07"
# Many users and articles, so a day's traffic is not a handful of entities; 45 days, so the
# 30-day window features have warmed up before the reference period.
WORLD = ["generator.seed=11", "generator.num_users=3000", "generator.num_articles=3000",
         "generator.num_events=40000", "generator.days=45", "generator.start=2026-01-01",
         "outputs.users.format=parquet", "outputs.events.format=parquet"]
DRIFTS = {
    "feature": ["generator.drift.dwell_scale=2.5"],
    "concept": ["generator.drift.device_effects={mobile: -0.8, desktop: 0.6, tablet: 1.0}",
                "generator.drift.favorite_topic_effect=0.4"],
}
DWELL_FEATURES = {f"{kind}_dwell_mean_{w}d" for kind in ("user", "article") for w in (1, 7, 30)}


@pytest.fixture(scope="session")
def drift_roots(tmp_path_factory, ray_session) -> dict[str, str]:
    """Storage roots `feature` and `concept`, each with a replayed /v1/rank log from Jan 31."""
    roots = {}
    for kind, drift in DRIFTS.items():
        root = str(tmp_path_factory.mktemp(f"drift-{kind}") / "root")
        common = [f"storage.root={root}", "tracking.mode=disabled"]
        generate_job(load_config(GenerateConfig, "configs/generate.yaml", [
            *common, *WORLD, f"generator.drift.start={DRIFT_START}", *drift]))
        ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
        features_job(load_config(FeaturesConfig, "configs/features.yaml",
                                 [*common, "materialize=false"]))  # replays read offline
        roots[kind] = root
    common = [f"storage.root={roots['feature']}", "tracking.mode=disabled"]
    result = train_job(load_config(TrainConfig, "configs/train_engagement.yaml", [
        *common, "trainer.num_workers=1", "trainer.keep_checkpoints=null", "model.epochs=3",
        "engagement.max_examples=null", f"engagement.until={DRIFT_START}"]))
    Registry(Storage(roots["feature"])).set_alias("engagement", "champion",
                                                  result.version.version, "test")
    shutil.copytree(f"{roots['feature']}/models", f"{roots['concept']}/models")
    for root in roots.values():
        replay_job(load_config(ReplayConfig, None, [f"storage.root={root}",
                                                    "tracking.mode=disabled",
                                                    "start=2026-01-31"]))
    return roots

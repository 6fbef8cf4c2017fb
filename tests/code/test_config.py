"""Configuration: YAML into pydantic models, overrides, and errors that name the key and file."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from jobs.ingest import IngestConfig
from slipway.config import ConfigError, JobConfig, load_config, merge


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "storage:\n  root: /data/a\n")
    cfg = load_config(JobConfig, path, ["ray.num_cpus=3", "tracking.mode=disabled"])
    assert cfg.storage.root == "/data/a"
    assert cfg.ray.num_cpus == 3
    assert cfg.tracking.mode == "disabled"


def test_layered_configs_override_key_by_key_and_stages_by_name(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("storage: {root: /data/a}\nray: {num_cpus: 2}\n")
    layer = tmp_path / "layer.yaml"
    layer.write_text("storage: {root: s3://b}\n")
    cfg = load_config(JobConfig, [base, layer], ["tracking.mode=disabled"])
    assert (cfg.storage.root, cfg.ray.num_cpus, cfg.tracking.mode) == ("s3://b", 2, "disabled")
    merged = merge({"stages": [{"name": "a", "job": "x", "set": ["k=1"]},
                               {"name": "b", "job": "y"}]},
                   {"stages": [{"name": "b", "enabled": False}, {"name": "c", "job": "z"}]})
    assert merged["stages"] == [{"name": "a", "job": "x", "set": ["k=1"]},
                                {"name": "b", "job": "y", "enabled": False},
                                {"name": "c", "job": "z"}]
    assert merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # other lists replace
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {rooot: x}\n")
    with pytest.raises(ConfigError, match=r"base.yaml \+ .*bad.yaml"):
        load_config(JobConfig, [base, bad])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "storage:\n  rooot: /x\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, path)
    assert "storage.rooot" in str(err.value) and str(path) in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "ray:\n  num_cpus: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, path)
    assert "ray.num_cpus" in str(err.value) and "'many'" in str(err.value)


def test_a_text_model_without_an_encoder_refuses_to_train_one():
    from jobs.train import TrainConfig

    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, "configs/train_text.yaml",
                    ["text.model=combined", "text.train_encoder=true"])
    assert "text" in str(err.value) and "model: combined trains no encoder" in str(err.value)
    assert load_config(TrainConfig, "configs/train_text.yaml",
                       ["text.model=combined"]).text.model == "combined"


def test_override_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(JobConfig, None, ["storage.root"])
    with pytest.raises(ConfigError, match="storage.root.x: unknown key|is a value"):
        load_config(JobConfig, None, ["storage.root=/a", "storage.root.x=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(JobConfig, tmp_path / "missing.yaml")


def test_nested_dataset_schema_errors_point_at_the_column(tmp_path):
    path = write(tmp_path, """
datasets:
  events:
    path: raw/events
    columns:
      - {name: user_id, type: integer}
""")
    with pytest.raises(ConfigError) as err:
        load_config(IngestConfig, path)
    assert "datasets.events.columns.0.type" in str(err.value)


def test_job_exits_2_with_message_on_bad_config(tmp_path):
    path = write(tmp_path, "datasets: {}\nbogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.ingest", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bogus: unknown key" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_shipped_config_validates_against_its_job():
    import importlib
    from pathlib import Path

    jobs = {"ingest": "jobs.ingest:IngestConfig", "generate": "jobs.generate:GenerateConfig",
            "features": "jobs.features:FeaturesConfig",
            "train_engagement": "jobs.train:TrainConfig", "train_text": "jobs.train:TrainConfig",
            "tune_engagement": "jobs.tune:TuneJobConfig",
            "evaluate_text": "jobs.evaluate:EvaluateConfig",
            "promote_engagement": "jobs.promote:PromoteConfig",
            "promote_text": "jobs.promote:PromoteConfig",
            "bootstrap_llm": "jobs.bootstrap_llm:BootstrapConfig",
            "finetune_articles": "jobs.finetune_llm:FinetuneConfig",
            "build_index": "jobs.build_index:BuildIndexConfig",
            "monitor": "jobs.monitor:MonitorConfig",
            "monitor_topics": "jobs.monitor:MonitorConfig",
            "pipeline": "jobs.pipeline:PipelineConfig",
            "experiments/ranker_ab": "jobs.experiment:ExperimentConfig",
            "select_for_labeling": "jobs.select_for_labeling:SelectConfig",
            "simulate_annotators": "jobs.simulate_annotators:SimulateConfig",
            "accept_labels": "jobs.accept_labels:AcceptConfig",
            "labeling_round": "jobs.labeling_round:RoundConfig",
            "optimize": "jobs.optimize:OptimizeConfig",
            "stream_features": "jobs.stream_features:StreamFeaturesConfig"}
    layers = {"production/features": "features", "production/monitor": "monitor",
              "production/pipeline": "pipeline",
              "production/stream_features": "stream_features"}  # each over its base
    shipped = {str(p.relative_to("configs").with_suffix(""))
               for p in Path("configs").rglob("*.yaml") if p.parts[1] not in ("behaviour", "serve")}
    assert shipped == set(jobs) | set(layers), "map each shipped config to its job here"
    for name, target in [*jobs.items(), *((layer, jobs[base]) for layer, base in layers.items())]:
        module, cls = target.split(":")
        paths = [f"configs/{layers.get(name, name)}.yaml", f"configs/{name}.yaml"]
        load_config(getattr(importlib.import_module(module), cls), dict.fromkeys(paths))


def test_serve_configs_validate_as_serve_and_app_settings():
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    from serve_apps.settings import AppSettings

    deployments = {"Ingress", "Classifier", "Ranker", "Retriever", "Generator"}
    for path in Path("configs/serve").glob("*.yaml"):
        schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        for app in schema.applications:
            assert app.import_path == "serve_apps.app:build"
            AppSettings.model_validate(app.args)
            assert {d.name for d in app.deployments} <= deployments, path
    with pytest.raises(Exception, match="unknown key"):
        from serve_apps.app import build

        build({"storage_root": "data", "classifer_model": "typo"})

"""Cluster definitions: the launcher YAMLs pass the schema inside the `ray` package, the KubeRay
manifests carry the fields KubeRay requires, and every job, config and Serve config they name
loads (production configs included)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs.pipeline import Stage, job_entry, stage_config
from slipway.config import load_config

MANIFESTS = {p.name: yaml.safe_load(p.read_text()) for p in Path("cluster/kuberay").glob("*.yaml")}


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", ["cluster/aws.yaml", "cluster/gcp.yaml"])
def test_launcher_configs_pass_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(Path(path).read_text())
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # as `ray up` checks it, defaults filled
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and {"cpu_worker", "gpu_worker"} <= set(types)
    for name in ("cpu_worker", "gpu_worker"):  # autoscaled groups
        assert types[name]["max_workers"] > types[name]["min_workers"]
    gpu = types["gpu_worker"]["node_config"]
    assert gpu.get("guestAccelerators") or gpu.get("InstanceType", "").startswith(("g", "p"))
    assert config["file_mounts"]["/home/ray/slipway"] == "."
    typo = {**config, "available_node_types": {**types, "gpu_worker": {
        **types["gpu_worker"], "min_worker": 1}}}
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(typo, ray_schema())


def check_cluster_spec(spec: dict) -> None:
    """What KubeRay needs of a RayCluster spec, plus our autoscaling and GPU group."""
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    groups = [head["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for template in groups:
        containers = template["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
        for container in containers:  # token auth on; the token from the Secret, not the file
            assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"], container
            assert container["envFrom"] == [{"secretRef": {"name": "slipway-secrets"}}]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    limits = [c["resources"]["limits"] for g in spec["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"]]
    assert any("nvidia.com/gpu" in lim for lim in limits)


def check_job_spec(spec: dict) -> None:
    """A RayJob spec: an entrypoint of one of our jobs whose config loads, and a cluster."""
    assert spec.get("clusterSelector") or spec.get("rayClusterSpec")
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "-m"] and words[2].startswith("jobs.")
    _, model = job_entry(Stage(name="x", job=words[2].removeprefix("jobs.")))
    config = words[words.index("--config") + 1]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    load_config(model, config, sets)
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/slipway"


def test_kuberay_manifests_carry_what_kuberay_requires():
    kinds = {m["kind"]: m for m in MANIFESTS.values()}
    assert set(kinds) == {"RayCluster", "RayJob", "RayCronJob", "RayService"}
    assert all(m["apiVersion"] == "ray.io/v1" for m in MANIFESTS.values())
    check_cluster_spec(kinds["RayCluster"]["spec"])
    check_job_spec(kinds["RayJob"]["spec"])
    cron = kinds["RayCronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5
    check_job_spec(cron["jobTemplate"])


def test_rayservice_embeds_the_production_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.settings import AppSettings

    spec = next(m for m in MANIFESTS.values() if m["kind"] == "RayService")["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    assert embedded == yaml.safe_load(Path("configs/serve/production.yaml").read_text())
    for app in ServeDeploySchema.model_validate(embedded).applications:
        settings = AppSettings.model_validate(app.args)
        assert settings.storage_root.startswith("s3://")
        assert settings.feature_store.online_store.type == "redis"
        assert settings.auth.redis_url  # rate limits shared by every ingress replica
    generator = next(d for d in embedded["applications"][0]["deployments"]
                     if d["name"] == "Generator")
    assert generator["ray_actor_options"]["num_gpus"] == 1
    check_cluster_spec(spec["rayClusterConfig"])
    cluster = next(m for m in MANIFESTS.values() if m["kind"] == "RayCluster")["spec"]
    assert spec["rayClusterConfig"] == cluster  # one cluster shape, written in two manifests


@pytest.mark.parametrize("path", ["cluster/aws.yaml", "cluster/gcp.yaml"])
def test_launched_nodes_start_with_token_auth_and_no_secret_is_in_the_repository(path):
    config = yaml.safe_load(Path(path).read_text())
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    # The token is mounted from the user's machine (outside the repository).
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    settings = [line for folder in ("cluster", "configs") for p in Path(folder).rglob("*.yaml")
                for line in p.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "RAY_AUTH_TOKEN" in line]


PRODUCTION = ["configs/pipeline.yaml", "configs/production/pipeline.yaml"]


@pytest.mark.parametrize("paths", [["configs/pipeline.yaml"], PRODUCTION])
def test_every_pipeline_stage_config_loads(paths):
    from jobs.pipeline import PipelineConfig

    pipeline = load_config(PipelineConfig, paths)
    for stage in pipeline.stages:
        cfg = stage_config(stage, pipeline)
        assert cfg.storage.root == pipeline.storage.root


def test_production_layer_changes_only_what_it_names():
    from jobs.pipeline import PipelineConfig

    default = load_config(PipelineConfig, "configs/pipeline.yaml")
    production = load_config(PipelineConfig, PRODUCTION)
    shape = [(s.name, s.job, s.inputs, s.gate) for s in default.stages if s.job != "generate"]
    assert [(s.name, s.job, s.inputs, s.gate) for s in production.stages] == shape
    assert production.storage.root == "s3://slipway-prod" and default.storage.root == "data"
    stages = {s.name: s for s in production.stages}
    assert stages["train"].set == ["trainer.use_gpu=true", "trainer.num_workers=4"]
    assert stages["train"].config == "configs/train_engagement.yaml"  # kept from the base
    features = stage_config(stages["features"], production)
    assert features.feature_store.online_store.type == "redis"
    assert features.feature_store.project == "slipway"  # from configs/features.yaml
    monitor = stage_config(stages["monitor"], production)
    assert monitor.retrain.enabled and monitor.windows.size == "1D"  # layer + base


def test_a_submissions_own_env_vars_are_left_to_it(monkeypatch):
    from slipway.runtime import SUBMITTED_JOB_CONFIG, runtime_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert {"HF_HUB_OFFLINE", "WANDB_MODE"} <= set(runtime_env()["env_vars"])
    # `ray job submit --runtime-env-json '{"env_vars": {"WANDB_MODE": "online"}}'`: Ray fails a
    # driver that sets the same key again, so the driver leaves it out.
    monkeypatch.setenv(SUBMITTED_JOB_CONFIG, json.dumps(
        {"runtime_env": {"env_vars": {"WANDB_MODE": "online"}}, "metadata": {}}))
    env = runtime_env()["env_vars"]
    assert "WANDB_MODE" not in env and env["HF_HUB_OFFLINE"] == "1"

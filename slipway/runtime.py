"""Connecting a job to Ray: a local Ray by default, a cluster when an address is given.

The runtime environment that jobs need on every worker is declared here, once.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import ray
from ray.data import DataContext

from slipway.config import RayConfig

# Set by Ray in the driver of a submitted job: its runtime env and metadata, as JSON.
SUBMITTED_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Environment every worker needs; values come from the driver's environment when set there.
WORKER_ENV_VARS = ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "SLIPWAY_GIT_SHA",
                   "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE")


def runtime_env() -> dict:
    """The runtime environment for this project's Ray workers. Under `ray job submit`, variables
    the submission's own runtime env sets are left to it (Ray refuses to merge the same key)."""
    env = {name: os.environ[name] for name in WORKER_ENV_VARS if name in os.environ}
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    submitted = json.loads(os.environ.get(SUBMITTED_JOB_CONFIG, "{}")).get("runtime_env") or {}
    return {"env_vars": {k: v for k, v in env.items() if k not in submitted.get("env_vars", {})}}


def job_metadata() -> dict[str, str]:
    """What the dashboard shows for this driver: the job module and its arguments."""
    main = sys.modules["__main__"]
    module = main.__spec__.name if getattr(main, "__spec__", None) else sys.argv[0]
    return {"slipway_job": module, "slipway_args": " ".join(sys.argv[1:])[:1000]}


def system_config(num_cpus: int | None) -> dict:
    """Raylet settings for a Ray this process starts: up to two idle workers kept per CPU.

    Ray keeps one per CPU by default. A Ray Data job's stages (read, shuffle map, shuffle
    reduce, write) each lease workers while the previous stage's are still returning, so with
    the default every stage waited about 1.5 s for new worker processes while idle ones were
    killed (benchmarks/features.py). Clusters set the same through `RAY_num_workers_soft_limit`
    (cluster/).
    """
    return {"num_workers_soft_limit": 2 * (num_cpus or os.cpu_count() or 1)}


def configure_data() -> None:
    """Ray Data settings of every job in this process.

    - Parquet is read by the V1 reader, one task per file or row group: Ray 2.60's V2 reader
      packs files into 128 MiB read units whatever `override_num_blocks` says, which left
      seven of a 10M-event read's eight files to one task.
    - Shuffle shards are not compressed: through one machine's object store, zstd cost more
      CPU than it saved (half of the feature job's shuffle time).
    """
    context = DataContext.get_current()
    context.enable_progress_bars = os.environ.get("SLIPWAY_PROGRESS", "1") == "1"
    context.enable_arrow_backed_pandas_conversion = False
    context.use_datasource_v2 = False
    context.shuffle_compression = "none"


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process, in the `slipway` namespace, with the project's env."""
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = {
            "runtime_env": runtime_env(),
            "logging_level": logging.WARNING,
            "log_to_driver": True,
            "namespace": "slipway",
            "job_config": ray.job_config.JobConfig(metadata=job_metadata()),
        }
        if address is None:
            kwargs.update(num_cpus=cfg.num_cpus, _system_config=system_config(cfg.num_cpus))
        ray.init(address=address, **kwargs)
    configure_data()

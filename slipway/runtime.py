"""Connecting a job to Ray: a local Ray by default, a cluster when an address is given.

The runtime environment that jobs need on every worker is declared here, once.
"""

from __future__ import annotations

import logging
import os

import ray
from ray.data import DataContext

from slipway.config import RayConfig

# Environment every worker needs; values come from the driver's environment when set there.
WORKER_ENV_VARS = ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "SLIPWAY_GIT_SHA",
                   "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE")


def runtime_env() -> dict:
    """The runtime environment for this project's Ray workers."""
    env = {name: os.environ[name] for name in WORKER_ENV_VARS if name in os.environ}
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    return {"env_vars": env}


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process, in the `slipway` namespace, with the project's env."""
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = {
            "runtime_env": runtime_env(),
            "logging_level": logging.WARNING,
            "log_to_driver": True,
            "namespace": "slipway",
        }
        if address is None:
            kwargs["num_cpus"] = cfg.num_cpus
        ray.init(address=address, **kwargs)
    context = DataContext.get_current()
    context.enable_progress_bars = os.environ.get("SLIPWAY_PROGRESS", "1") == "1"
    context.enable_arrow_backed_pandas_conversion = False

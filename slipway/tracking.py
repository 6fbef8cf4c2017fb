"""One helper for experiment tracking: every job run is a W&B run plus a JSON manifest.

W&B runs offline unless `WANDB_API_KEY` is set (or the config says otherwise); offline runs can be
uploaded later with `wandb sync <root>/wandb/wandb/offline-run-*`. The manifest on the storage
root (`runs/<job>/<run_id>.json`) records the same config, code version, data versions and final
metrics in plain JSON, for the pipeline and for people.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slipway.config import JobConfig, TrackingConfig
from slipway.storage import Storage


def git_sha() -> str:
    """The code version: `SLIPWAY_GIT_SHA` if set (cluster jobs), else `git rev-parse HEAD`."""
    if sha := os.environ.get("SLIPWAY_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wandb_mode(cfg: TrackingConfig) -> str:
    """Resolve `auto` to online when an API key is present, offline otherwise."""
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_dir(storage: Storage) -> str:
    """Local folder for W&B files: under a local storage root, else a temp folder."""
    path = os.path.join(storage.root, "wandb") if storage.is_local else tempfile.mkdtemp()
    os.makedirs(path, exist_ok=True)
    return path


@dataclass
class JobRun:
    """A tracked job run: log metrics to it; they land in W&B and in the manifest."""

    job: str
    run_id: str
    wandb_run: Any
    git_sha: str
    metrics: dict[str, Any] = field(default_factory=dict)
    data_versions: dict[str, str] = field(default_factory=dict)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log metrics (numbers) to W&B; the latest value of each lands in the manifest."""
        self.metrics.update(metrics)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def add_data_version(self, name: str, version: str) -> None:
        """Record the version of a dataset this run read or wrote."""
        self.data_versions[name] = version
        if self.wandb_run is not None:
            self.wandb_run.config.update({"data_versions": self.data_versions},
                                         allow_val_change=True)


def worker_wandb(cfg: JobConfig, storage: Storage, job: str, run_id: str,
                 group: str | None = None, **extra_config: Any) -> dict | None:
    """`wandb.init` arguments for a run opened by a Ray Train worker (rank 0); None if disabled.

    Training jobs log from rank 0, live, rather than from the driver: the run gets the job's
    config, git sha and data versions here, and per-epoch metrics from the training loop.
    """
    mode = wandb_mode(cfg.tracking)
    if mode == "disabled":
        return None
    return {"project": cfg.tracking.project, "entity": cfg.tracking.entity, "job_type": job,
            "id": run_id, "name": run_id, "group": group, "mode": mode,
            "dir": wandb_dir(storage),
            "config": {**cfg.model_dump(mode="json"), "git_sha": git_sha(), **extra_config}}


@contextmanager
def track_run(job: str, cfg: JobConfig, storage: Storage, wandb_run: bool = True
              ) -> Iterator[JobRun]:
    """Open a W&B run for `job` with its config and git sha (unless `wandb_run` is false, for
    jobs whose workers open it); write the manifest when the job ends."""
    import wandb

    mode = wandb_mode(cfg.tracking) if wandb_run else "disabled"
    run_id = f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    sha = git_sha()
    run_handle = None
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        run_handle = wandb.init(
            project=cfg.tracking.project,
            entity=cfg.tracking.entity,
            job_type=job,
            name=run_id,
            id=run_id,
            mode=mode,
            dir=wandb_dir(storage),
            config={**cfg.model_dump(mode="json"), "git_sha": sha},
            reinit="create_new",  # a job that runs another (promote -> evaluate) keeps its run
        )
    run = JobRun(job=job, run_id=run_id, wandb_run=run_handle, git_sha=sha)
    status = "failed"
    started = time.time()
    try:
        yield run
        status = "succeeded"
    finally:
        if run_handle is not None:
            run_handle.summary.update(run.metrics)
            run_handle.finish(exit_code=0 if status == "succeeded" else 1)
        storage.write_json(
            {
                "job": job,
                "run_id": run_id,
                "status": status,
                "git_sha": sha,
                "started_at": started,
                "seconds": round(time.time() - started, 3),
                "config": cfg.model_dump(mode="json"),
                "data_versions": run.data_versions,
                "metrics": run.metrics,
                "wandb_mode": wandb_mode(cfg.tracking),
            },
            "runs",
            job,
            f"{run_id}.json",
        )

"""Pipeline stages: which job runs with which config, what it reads, and whether it must run.

A stage's record (`<root>/pipeline/<stage>.json`) holds a hash of its resolved config and the
content version of each input path, taken when it last succeeded. A stage whose config and inputs
still match its record is skipped; anything else runs it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from slipway.config import JobConfig, StrictModel, load_config
from slipway.storage import Storage


class Stage(StrictModel):
    """One job of the pipeline."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    job: str = Field(description="module under jobs/, e.g. train for jobs.train")
    config: str | None = Field(default=None, description="the job's YAML config")
    set: list[str] = Field(default_factory=list, description="overrides, as --set takes them")
    inputs: list[str] = Field(default_factory=list, description="paths under the storage root "
                              "the stage reads, or globs such as models/x/versions/*/metadata.json")
    gate: bool = Field(default=False, description="a refusal (exit 1) is an outcome, not a "
                       "failure: the pipeline goes on")
    if_missing: Literal["fail", "skip"] = Field(
        default="fail", description="skip: wait (do not run) while an input does not exist")

    @field_validator("job")
    @classmethod
    def _job_exists(cls, job: str) -> str:
        try:
            module = importlib.import_module(f"jobs.{job}")
        except ModuleNotFoundError:
            raise ValueError(f"no job jobs.{job}; use a module name under jobs/") from None
        if not hasattr(module, "main"):
            raise ValueError(f"jobs.{job} has no main(cfg); it is not a job")
        return job


@dataclass
class Plan:
    """What to do with one stage now, and why."""

    action: Literal["run", "skip", "wait"]
    reason: str


def job_entry(stage: Stage) -> tuple[Callable[[JobConfig], object], type[JobConfig]]:
    """The stage job's `main` and its config model (from `main`'s annotation)."""
    main = importlib.import_module(f"jobs.{stage.job}").main
    return main, typing.get_type_hints(main)["cfg"]


def stage_config(stage: Stage, shared: JobConfig) -> JobConfig:
    """The stage's validated config, with the pipeline's storage, Ray and tracking sections."""
    _, model = job_entry(stage)
    cfg = load_config(model, stage.config, stage.set)
    return cfg.model_copy(update={"storage": shared.storage, "ray": shared.ray,
                                  "tracking": shared.tracking})


def config_hash(cfg: JobConfig) -> str:
    """A short hash of a resolved config. Tracking and the Ray address change no output, so the
    same stage run on a laptop's Ray and on a cluster counts as the same."""
    text = cfg.model_dump_json(exclude={"tracking", "ray"})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_version(storage: Storage, path: str) -> str:
    """Content version of a path under the root, or of the files a glob matches
    (`models/x/versions/*/metadata.json`); "" when nothing is there."""
    parts = path.split("/")
    if "*" not in path:
        return storage.version(*parts) if storage.exists(*parts) else ""
    base = parts[:next(i for i, p in enumerate(parts) if "*" in p)]
    prefix = storage.uri() + "/"
    files = [f.removeprefix(prefix) for f in storage.list_files(*base)]
    matched = [f for f in files if fnmatch.fnmatchcase(f, path)]
    if not matched:
        return ""
    text = "".join(f"{f}:{storage.version(*f.split('/'))}\n" for f in matched)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_versions(stage: Stage, storage: Storage) -> dict[str, str]:
    """Content version of each input ("" where it does not exist)."""
    return {path: input_version(storage, path) for path in stage.inputs}


def plan(stage: Stage, cfg: JobConfig, storage: Storage, force: bool) -> Plan:
    """Run, skip (config and inputs as recorded) or wait (an input is missing, if_missing=skip)."""
    inputs = input_versions(stage, storage)
    missing = [p for p, v in inputs.items() if not v]
    if missing and stage.if_missing == "skip":
        return Plan("wait", f"no {', '.join(missing)} yet")
    if force:
        return Plan("run", "selected")
    if not storage.exists("pipeline", f"{stage.name}.json"):
        return Plan("run", "never ran")
    record = storage.read_json("pipeline", f"{stage.name}.json")
    if record["config_hash"] != config_hash(cfg):
        return Plan("run", "config changed")
    changed = [p for p in inputs if record["inputs"].get(p) != inputs[p]]
    if changed:
        return Plan("run", f"{', '.join(changed)} changed")
    return Plan("skip", "config and inputs unchanged")


def record(stage: Stage, cfg: JobConfig, storage: Storage, outcome: str, seconds: float) -> None:
    """Note a finished stage, with its inputs as they are now (after it ran, so a stage that
    writes into its own inputs does not look changed next time)."""
    storage.write_json({"stage": stage.name, "job": stage.job, "outcome": outcome,
                        "seconds": round(seconds, 1), "config_hash": config_hash(cfg),
                        "inputs": input_versions(stage, storage)},
                       "pipeline", f"{stage.name}.json")

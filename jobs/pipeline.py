"""Run the platform's stages in order, each as its job would run alone, skipping a stage whose
config and inputs have not changed since it last succeeded (records under `<root>/pipeline/`).

    python -m jobs.pipeline --config configs/pipeline.yaml [--from STAGE | --only STAGE]
    python -m jobs.pipeline --config configs/pipeline.yaml --config configs/production/pipeline.yaml

`--from STAGE` skips the stages before it and forces STAGE; the later ones run when their config or
inputs changed, as usual. `--only STAGE` forces that one stage alone. The pipeline's storage, Ray
and tracking sections apply to every stage. A second `--config` layers over the first: stages merge
by name, so a production file holds only what differs (and `enabled: false` drops a stage).

A stage's record (`<root>/pipeline/<stage>.json`) holds a hash of its resolved config and the
content version of each input path, taken when it last succeeded. A stage whose config and inputs
still match its record is skipped; anything else runs it.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import importlib
import importlib.util
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, StrictModel, load_config
from slipway.errors import SlipwayError
from slipway.runtime import init_ray
from slipway.storage import Storage


class Stage(StrictModel):
    """One job of the pipeline."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    job: str = Field(description="module under jobs/, e.g. train for jobs.train")
    config: str | list[str] | None = Field(
        default=None, description="the job's YAML config, or several layered in order")
    set: list[str] = Field(default_factory=list, description="overrides, as --set takes them")
    inputs: list[str] = Field(default_factory=list, description="paths under the storage root "
                              "the stage reads, or globs such as models/x/versions/*/metadata.json")
    gate: bool = Field(default=False, description="a refusal (exit 1) is an outcome, not a "
                       "failure: the pipeline goes on")
    if_missing: Literal["fail", "skip"] = Field(
        default="fail", description="skip: wait (do not run) while an input does not exist")
    enabled: bool = Field(default=True, description="false leaves the stage out (a layered "
                          "config turns off what a deployment does not run)")

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


FIRST_PARTY = ("jobs", "slipway", "llm")


def parse(path: str) -> ast.Module:
    """The syntax tree of a Python file. CPython 3.11 keeps the AST converter's recursion depth
    in state shared by threads, so a parse racing one in another thread (Ray's, W&B's) can
    fail with `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905): such a
    parse is simply repeated."""
    source = Path(path).read_text()
    for _ in range(4):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def code_version(module: str, first_party: tuple[str, ...] = FIRST_PARTY) -> str:
    """A hash of the code of `module` and of every first-party module it imports, directly or
    through others (imports inside functions included). Parsed, so comments and formatting do
    not count; a changed statement anywhere in what the stage runs does."""
    trees: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in trees:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from package.module import name`: a name, not a module
            spec = None
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        tree = parse(spec.origin)
        trees[name] = ast.dump(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        todo = [n for n in todo if n.split(".")[0] in first_party]
    text = "".join(f"{name}\n{trees[name]}\n" for name in sorted(trees))
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
    if record.get("code_version") != code_version(f"jobs.{stage.job}"):
        return Plan("run", f"code of jobs.{stage.job} or what it imports changed")
    changed = [p for p in inputs if record["inputs"].get(p) != inputs[p]]
    if changed:
        return Plan("run", f"{', '.join(changed)} changed")
    return Plan("skip", "config and inputs unchanged")


def record(stage: Stage, cfg: JobConfig, storage: Storage, outcome: str, seconds: float) -> None:
    """Note a finished stage, with its inputs as they are now (after it ran, so a stage that
    writes into its own inputs does not look changed next time)."""
    storage.write_json({"stage": stage.name, "job": stage.job, "outcome": outcome,
                        "seconds": round(seconds, 1), "config_hash": config_hash(cfg),
                        "code_version": code_version(f"jobs.{stage.job}"),
                        "inputs": input_versions(stage, storage)},
                       "pipeline", f"{stage.name}.json")


class PipelineConfig(JobConfig):
    """The stages, in order, and which of them to force."""

    stages: list[Stage] = Field(min_length=1)
    start_at: str | None = Field(default=None, description="--from: start at this stage, forced")
    only: str | None = Field(default=None, description="--only: run just this stage")

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; rename the repeated ones in {names}")
        return [s for s in stages if s.enabled]

    @field_validator("start_at", "only")
    @classmethod
    def _a_stage(cls, name: str | None, info: ValidationInfo) -> str | None:
        names = [s.name for s in info.data.get("stages", [])]
        if name is not None and name not in names:
            raise ValueError(f"no stage {name!r}; pick one of {names}")
        return name


def main(cfg: PipelineConfig) -> dict[str, str]:
    """Run or skip each stage; return {stage: outcome}. A failing stage stops the pipeline."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    names = [s.name for s in cfg.stages]
    first = names.index(cfg.start_at) if cfg.start_at else 0
    outcomes: dict[str, str] = {}
    for i, stage in enumerate(cfg.stages):
        if cfg.only and stage.name != cfg.only:
            continue
        if i < first:
            outcomes[stage.name] = "skipped"
            print(f"== {stage.name}: skipped (before --from)")
            continue
        stage_cfg = stage_config(stage, cfg)
        step = plan(stage, stage_cfg, storage, force=stage.name in (cfg.only, cfg.start_at))
        if step.action != "run":
            outcomes[stage.name] = {"skip": "skipped", "wait": "waiting"}[step.action]
            print(f"== {stage.name}: {outcomes[stage.name]} ({step.reason})")
            continue
        print(f"== {stage.name}: running jobs.{stage.job} ({step.reason})", flush=True)
        job, _ = job_entry(stage)
        started = time.time()
        try:
            job(stage_cfg)
            outcome = "ran"
        except SlipwayError as exc:
            if not stage.gate:
                raise JobFailed(f"stage {stage.name} failed: {exc}\nfix it, then rerun from "
                                f"there: python -m jobs.pipeline --from {stage.name}") from None
            outcome = f"not passed: {exc}"
        record(stage, stage_cfg, storage, outcome, time.time() - started)
        outcomes[stage.name] = outcome
    width = max(map(len, outcomes))
    print("\n".join(f"{name:<{width}}  {outcome}" for name, outcome in outcomes.items()))
    return outcomes


def cli(argv: list[str]) -> None:
    """`--from` / `--only` on top of the jobs' shared command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--from", dest="start_at")
    parser.add_argument("--only")
    known, rest = parser.parse_known_args(argv)
    for key in ("start_at", "only"):
        if getattr(known, key):
            rest += ["--set", f"{key}={getattr(known, key)}"]
    run_job(PipelineConfig, main, __doc__, rest)


if __name__ == "__main__":
    cli(sys.argv[1:])

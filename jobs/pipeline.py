"""Run the platform's stages in order, each as its job would run alone, skipping a stage whose
config and inputs have not changed since it last succeeded (records under `<root>/pipeline/`).

    python -m jobs.pipeline --config configs/pipeline.yaml [--from STAGE | --only STAGE]

`--from STAGE` skips the stages before it and forces STAGE; the later ones run when their config or
inputs changed, as usual. `--only STAGE` forces that one stage alone. The pipeline's storage, Ray
and tracking sections apply to every stage.
"""

from __future__ import annotations

import argparse
import sys
import time

from pydantic import Field, ValidationInfo, field_validator

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.pipeline import Stage, job_entry, plan, record, stage_config
from slipway.runtime import init_ray
from slipway.storage import Storage


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
        return stages

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
        except JobFailed as exc:
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

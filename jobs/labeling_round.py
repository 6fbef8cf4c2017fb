"""One labeling round end to end, each step its own job run in turn: select what to label from
the served answers, annotate it (simulated annotators of known noise, when `annotators` is set),
accept the good labels into the next label-set version, find likely label errors in that version,
train the text classifier on it and put it through the promotion gate against the champion.

With `start_label_studio` a local Label Studio server (its own SQLite under `data_dir`) runs for
the round and every step talks to it through the SDK; with `label_studio` alone the round goes to
a server that runs elsewhere, and without annotators the round stops once its tasks are there,
for people to label (then run jobs.accept_labels and the rest). `make demo` runs this.

    python -m jobs.labeling_round --config configs/labeling_round.yaml
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from jobs.accept_labels import AcceptConfig
from jobs.accept_labels import main as accept
from jobs.find_label_issues import IssuesConfig
from jobs.find_label_issues import main as find_issues
from jobs.promote import PromoteConfig
from jobs.promote import main as promote
from jobs.select_for_labeling import SelectConfig
from jobs.select_for_labeling import main as select
from jobs.simulate_annotators import SimulateConfig
from jobs.simulate_annotators import main as simulate
from jobs.train import TrainConfig
from jobs.train import main as train
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, StrictModel, load_config
from slipway.labeling.studio import LocalServer, StudioSettings

StepConfig = str | list[str]


class LocalStudio(StrictModel):
    """A Label Studio server started for the round."""

    data_dir: str = Field(description="its SQLite database and files")
    port: int = Field(default=8090, ge=1024, le=65535)
    template: str | None = Field(
        default=".label-studio/template", description="a started data dir (make label-studio "
        "makes this one) whose database an empty data_dir copies; null: migrate a new one")


class RoundConfig(JobConfig):
    """The round's steps: each a job config file, with this config's storage, tracking and
    Label Studio server applied over it."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$")
    label_studio: StudioSettings | None = None
    start_label_studio: LocalStudio | None = None
    # Each step's config: a file, or a list of files layered in order (later keys win).
    select: StepConfig = "configs/select_for_labeling.yaml"
    annotators: StepConfig | None = Field(default="configs/simulate_annotators.yaml",
                                          description="simulated annotators' config; null: people")
    accept: StepConfig = "configs/accept_labels.yaml"
    train: StepConfig = "configs/train_text.yaml"
    promote: StepConfig = "configs/promote_text.yaml"


def step(cfg: RoundConfig, model: type, path: StepConfig, studio: StudioSettings | None,
         *overrides: str) -> Any:
    """A step's config: its file and `overrides`, with the round's shared sections."""
    loaded = load_config(model, path, [f"project={cfg.project}", *overrides]
                         if "project" in model.model_fields else list(overrides))
    shared = {"storage": cfg.storage, "ray": cfg.ray, "tracking": cfg.tracking}
    if "label_studio" in model.model_fields:
        shared["label_studio"] = studio
    return loaded.model_copy(update=shared)


def run_round(cfg: RoundConfig, studio: StudioSettings | None) -> dict[str, Any]:
    """Run the steps against `studio` (or files); return what each step reported."""
    print(f"== labeling round of {cfg.project}: select ==", flush=True)
    picks = select(step(cfg, SelectConfig, cfg.select, studio))
    if cfg.annotators is None:
        print("the round's tasks wait for annotators; then run jobs.accept_labels")
        return {"picks": picks}
    print("== annotate (simulated annotators) ==", flush=True)
    simulate(step(cfg, SimulateConfig, cfg.annotators, studio))
    print("== accept ==", flush=True)
    accepted = accept(step(cfg, AcceptConfig, cfg.accept, studio, *(
        [] if studio else ["export=" + "/".join(("labeling", cfg.project, "rounds", picks.attrs[
            "round"], "simulated_export.json"))])))
    if accepted["label_set_version"] is None:
        raise JobFailed("no label reached min_quality; nothing to train on")
    print("== label issues in the new label set ==", flush=True)
    issues = find_issues(IssuesConfig(storage=cfg.storage, tracking=cfg.tracking,
                                      project=cfg.project))
    print(f"== train {cfg.project} on label set v{accepted['label_set_version']} ==", flush=True)
    trained = train(step(cfg, TrainConfig, cfg.train, None,
                         f"text.label_set={cfg.project}@{accepted['label_set_version']}"))
    print("== promotion gate: the retrained model against the champion ==", flush=True)
    try:
        champion = promote(step(cfg, PromoteConfig, cfg.promote, None))
    except JobFailed as exc:
        print(f"{cfg.project}: challenger not promoted: {exc}")
        champion = None
    return {"picks": picks, "accepted": accepted, "issues": issues, "trained": trained,
            "champion": champion}


def main(cfg: RoundConfig) -> dict[str, Any]:
    """Start Label Studio if asked, run the round."""
    if cfg.start_label_studio is None:
        return run_round(cfg, cfg.label_studio)
    print(f"starting Label Studio on 127.0.0.1:{cfg.start_label_studio.port} "
          f"({cfg.start_label_studio.data_dir})", flush=True)
    local = cfg.start_label_studio
    with LocalServer(local.data_dir, local.port, template=local.template) as studio:
        return run_round(cfg, studio)


if __name__ == "__main__":
    run_job(RoundConfig, main, __doc__)

"""Simulated annotators of known noise label a round: the demo's and the tests' stand-in for
people in Label Studio.

Each annotator (`annotators`: name and flip rate) labels every task of the round with its true
class, except a share of them flipped to another class at random. The truth of an item is its
known answer for gold items, else its label in `truth` (a labelled table, matched on the text).
With the round in Label Studio, the annotations are made there through the SDK, one Label Studio
user per annotator, as people would make them; otherwise a Label Studio JSON export of them is
written beside the round (`simulated_export.json`) for `jobs.accept_labels --set export=...`.

    python -m jobs.simulate_annotators --set round=20261201-101500
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, StrictModel
from slipway.data.tables import read_table
from slipway.labeling import simulated
from slipway.labeling.rounds import item_id, rounds
from slipway.labeling.rounds import picks as round_picks
from slipway.labeling.studio import LabelStudio, StudioSettings
from slipway.labeling.tasks import choice
from slipway.storage import Storage


class Truth(StrictModel):
    """The labelled table the annotators know the answers from."""

    path: str = "curated/articles"
    text_column: str = "title"
    label_column: str = "topic"


class SimulateConfig(JobConfig):
    """Which round, who annotates it and how noisily."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$")
    round: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$",
                              description="the round (default: the newest)")
    annotators: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {"careful": 0.05, "average": 0.15, "sloppy": 0.40},
        min_length=1, description="annotator name: share of their labels flipped")
    truth: Truth = Truth()
    label_studio: StudioSettings | None = Field(
        default=None, description="the server (default: the URL the round was pushed to)")
    seed: int = 0


def main(cfg: SimulateConfig) -> pd.DataFrame:
    """Annotate the round's tasks; return the annotations (`item`, `annotator`, `label`)."""
    storage = Storage(cfg.storage.root)
    made = rounds(storage, cfg.project)
    if not made:
        raise JobFailed(f"{cfg.project} has no round; run jobs.select_for_labeling first")
    name = cfg.round or made[-1]
    folder = ("labeling", cfg.project, "rounds", name)
    if name not in made:
        raise JobFailed(f"no complete round {name!r} of {cfg.project}; rounds: {made}")
    meta = storage.read_json(*folder, "round.json")
    classes = meta["classes"]
    picks = round_picks(storage, cfg.project, name)
    table = read_table(cfg.truth.path, storage, "truth.path")
    known = pd.Series(table[cfg.truth.label_column].astype(str).to_numpy(),
                      index=table[cfg.truth.text_column].astype(str).map(item_id))
    known = known[~known.index.duplicated(keep="last")]
    truth = picks["item"].map(known).where(picks["gold_label"].isna(), picks["gold_label"])
    if truth.isna().any() or not truth.isin(classes).all():
        unknown = picks.loc[truth.isna() | ~truth.isin(classes), "item"].tolist()
        raise JobFailed(f"truth: items {unknown[:3]} ({len(unknown)} in all) have no known "
                        f"label among {classes} in {cfg.truth.path}; point truth at the table "
                        "the served texts come from")
    given = simulated.annotate(picks["item"].to_numpy(), truth.map(classes.index).to_numpy(),
                               classes, cfg.annotators, cfg.seed)
    if meta.get("label_studio"):
        settings = cfg.label_studio or StudioSettings(url=meta["label_studio"]["url"])
        added = LabelStudio(settings).annotate(meta["label_studio"]["project"], given)
        print(f"{cfg.project} round {name}: {added} annotations by {list(cfg.annotators)} in "
              f"Label Studio project {meta['label_studio']['project']}")
        return given
    tasks = storage.read_json(*folder, "tasks.json")
    by_item = given.groupby("item")
    export = [{**task, "id": i + 1, "annotations": [
        {"id": (i + 1) * 100 + j, "completed_by": row.annotator, "was_cancelled": False,
         "result": [choice(row.label)]}
        for j, row in enumerate(by_item.get_group(task["data"]["item"]).itertuples())]}
        for i, task in enumerate(tasks)]
    uri = storage.write_json(export, *folder, "simulated_export.json")
    print(f"{cfg.project} round {name}: {len(given)} annotations by {list(cfg.annotators)} -> "
          f"{uri}")
    return given


if __name__ == "__main__":
    run_job(SimulateConfig, main, __doc__)

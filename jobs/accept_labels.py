"""Read a labeling round's annotations back, judge them, and accept the good labels as the next
version of the project's label set.

The annotations come from the round's Label Studio project, exported through the SDK (a round
pushed by `jobs.select_for_labeling` with `label_studio` set), or from a Label Studio JSON export
file (`export`) for a tool that runs elsewhere; the export judged is kept in the round as
`export.json`. The round defaults to the newest one not yet accepted. The whole export is
checked first (slipway/labeling/tasks.py): nothing is accepted from a broken one. Items the round
labels again (relabels) are judged with their earlier annotations, an annotator's newest label
counting. Then: agreement (Cohen per annotator pair, Fleiss, Krippendorff), each annotator's
accuracy on the round's gold items, and the consensus of the other items with per-annotator
quality (CROWDLAB, weighing in the probabilities the model served; majority vote beside it).
Items whose consensus quality reaches `min_quality` are accepted into a new label-set version
with their provenance; the others are listed as weak, to be labelled again. A project's first
acceptance can start its label set from an existing labelled table (`base`): that table becomes
version 1 and the round's labels version 2, replacing the base labels of the items they relabel.

    python -m jobs.accept_labels --set round=20261201-101500 --set export=project-3.json
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, StrictModel
from slipway.data.tables import locate, read_table
from slipway.labeling import label_sets
from slipway.labeling.quality import agreement, consensus, gold_accuracy, label_matrix
from slipway.labeling.rounds import annotated, is_accepted, item_id, rounds
from slipway.labeling.rounds import picks as round_picks
from slipway.labeling.studio import LabelStudio, StudioSettings
from slipway.labeling.tasks import read_annotations
from slipway.storage import Storage


class BaseLabels(StrictModel):
    """An existing labelled table: the label set's first version."""

    path: str = Field(description="CSV, JSON-lines or Parquet; relative paths are under "
                                  "storage.root")
    text_column: str = "text"
    label_column: str = "label"


def base_labels(base: BaseLabels, storage: Storage) -> pd.DataFrame:
    """The table as label-set rows: item, text, label, source."""
    frame = read_table(base.path, storage, "base.path")
    missing = [c for c in (base.text_column, base.label_column) if c not in frame.columns]
    if missing:
        raise JobFailed(f"base: columns {missing} are not in {base.path} (it has "
                        f"{list(frame.columns)}); set base.text_column / base.label_column")
    rows = pd.DataFrame({"text": frame[base.text_column].astype(str),
                         "label": frame[base.label_column].astype(str)})
    rows = rows.assign(item=rows["text"].map(item_id)).drop_duplicates("item", keep="last")
    return rows.assign(source_round=f"base:{base.path}")


def unaccepted_round(storage: Storage, project: str) -> str:
    """The newest complete round of the project without an `accepted.json`."""
    waiting = [name for name in rounds(storage, project)
               if not is_accepted(storage, project, name)]
    if not waiting:
        raise JobFailed(f"every round of {project} is accepted (or none exists); run "
                        "jobs.select_for_labeling for the next one")
    return waiting[-1]


def exported(cfg: AcceptConfig, meta: dict[str, Any], storage: Storage) -> list[dict[str, Any]]:
    """The round's annotated tasks: the export file, or an export from its Label Studio
    project."""
    if cfg.export:
        where, parts = locate(cfg.export, storage)
        return json.loads(where.read_bytes(*parts))
    if not meta.get("label_studio"):
        raise JobFailed(f"round {meta['round']} was not pushed to Label Studio: give its JSON "
                        "export as --set export=FILE")
    settings = cfg.label_studio or StudioSettings(url=meta["label_studio"]["url"])
    return LabelStudio(settings).export(meta["label_studio"]["project"])


class AcceptConfig(JobConfig):
    """Which round, its export, and the bar for accepting a consensus label."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$")
    round: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$",
                              description="the round the tasks came from (default: the newest "
                                          "round not yet accepted)")
    export: str | None = Field(default=None, description="a Label Studio JSON export of the "
                               "round's project: a path or URI, relative paths under "
                               "storage.root (default: export it from Label Studio)")
    label_studio: StudioSettings | None = Field(
        default=None, description="the server (default: the URL the round was pushed to)")
    base: BaseLabels | None = Field(default=None, description="labelled table that starts the "
                                    "project's label set (its first acceptance only)")
    min_quality: float = Field(default=0.5, ge=0, le=1,
                               description="consensus quality (CROWDLAB) needed to accept")
    min_annotators: int = Field(default=2, ge=1, description="annotations an item needs")


def main(cfg: AcceptConfig) -> dict[str, Any]:
    """Judge the round's annotations and write the accepted labels; return the summary."""
    storage = Storage(cfg.storage.root)
    name = cfg.round or unaccepted_round(storage, cfg.project)
    folder = ("labeling", cfg.project, "rounds", name)
    if not storage.exists(*folder, "round.json"):
        raise JobFailed(f"no round {name!r} of {cfg.project} under "
                        f"{storage.uri(*folder[:-1])}; run jobs.select_for_labeling first")
    meta = storage.read_json(*folder, "round.json")
    classes = meta["classes"]
    picks = round_picks(storage, cfg.project, name).set_index("item")
    export = exported(cfg, meta, storage)
    annotations = read_annotations(export, classes)
    relabelled = picks.index[picks["reason"] == "relabel"]
    if len(relabelled):  # another label for items labelled before: judged with their earlier ones
        before = annotated(storage, cfg.project, classes)[0]
        annotations = pd.concat([before[before["item"].isin(relabelled)], annotations],
                                ignore_index=True).drop_duplicates(["item", "annotator"],
                                                                   keep="last")
    foreign = sorted(set(annotations["item"]) - set(picks.index))
    if foreign:
        raise JobFailed(f"export: items {foreign[:3]} are not in round {name}; export the "
                        "project this round's tasks.json was imported into")
    gold = picks.loc[picks["reason"] == "gold", "gold_label"]
    scored = gold_accuracy(annotations, gold) if len(gold) else pd.Series(dtype=float)
    labelled = annotations[~annotations["item"].isin(gold.index)]
    counts = labelled.groupby("item").size()
    enough = counts.index[counts >= cfg.min_annotators]
    matrix = label_matrix(labelled[labelled["item"].isin(enough)], classes)
    if matrix.empty:
        raise JobFailed(f"no item of round {name} has {cfg.min_annotators} annotations yet; "
                        "wait for the annotators or lower min_annotators")
    probs = np.stack(picks.loc[matrix.index, "probabilities"].to_numpy())
    agreed = agreement(matrix, classes)
    result = consensus(matrix, probs)
    good = result.items["quality"] >= cfg.min_quality
    accepted = pd.DataFrame({
        "item": matrix.index[good],
        "text": picks.loc[matrix.index[good], "text"].to_numpy(),
        "label": np.asarray(classes)[result.items.loc[good, "label"].to_numpy()],
        "consensus_quality": result.items.loc[good, "quality"].to_numpy(),
        "annotators": counts.reindex(matrix.index[good]).to_numpy(),
        "source_round": name})
    by_item = labelled.groupby("item")  # provenance: who labelled, when, in which task
    accepted = accepted.join(pd.DataFrame({
        "annotated_by": by_item["annotator"].agg(lambda who: ",".join(sorted(who))),
        "annotated_at": by_item["annotated_at"].max(),
        "task": by_item["task"].last()}), on="item")
    summary = {
        "round": name, "annotations": len(annotations), "items": len(matrix),
        "accepted": int(good.sum()), "weak": result.weak(cfg.min_quality).tolist(),
        "agreement": agreed,
        "annotator_quality": result.annotators["quality"].to_dict(),
        "gold_accuracy": scored.to_dict(),
        "consensus_changes_majority": int((result.items["label"] != result.items["majority"])
                                          .sum())}
    if cfg.base and not label_sets.versions(storage, cfg.project) and len(accepted):
        label_sets.accept(storage, cfg.project, base_labels(cfg.base, storage),
                          round=f"base:{cfg.base.path}")
    summary["label_set_version"] = label_sets.accept(
        storage, cfg.project, accepted, round=name, model=meta["model"],
        agreement=agreed, annotator_quality=summary["annotator_quality"],
        gold_accuracy=summary["gold_accuracy"]) if len(accepted) else None
    storage.write_json(export, *folder, "export.json")
    storage.write_json(summary, *folder, "accepted.json")
    print(f"{cfg.project} round {name}: {len(annotations)} annotations of {len(matrix)} "
          f"items; Fleiss kappa {agreed['fleiss_kappa']}, Krippendorff alpha "
          f"{agreed['krippendorff_alpha']:.3f}")
    for who, quality in sorted(summary["annotator_quality"].items(), key=lambda kv: -kv[1]):
        gold_part = f", gold accuracy {scored[who]:.2f}" if who in scored else ""
        print(f"  annotator {who}: quality {quality:.3f}{gold_part}")
    print(f"accepted {summary['accepted']} labels as label set v{summary['label_set_version']}; "
          f"{len(summary['weak'])} weak items to label again")
    return summary


if __name__ == "__main__":
    run_job(AcceptConfig, main, __doc__)

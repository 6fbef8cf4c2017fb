"""Read a labeling round's annotations back, judge them, and accept the good labels as the next
version of the project's label set.

The annotations come from a Label Studio JSON export of the round's project (`export`: a file).
The whole export is checked first (slipway/labeling/tasks.py): nothing is accepted from a broken
one. Then: agreement (Cohen per annotator pair, Fleiss, Krippendorff), each annotator's accuracy
on the round's gold items, and the consensus of the other items with per-annotator quality
(CROWDLAB, weighing in the probabilities the model served; majority vote beside it). Items whose
consensus quality reaches `min_quality` are accepted into a new label-set version with their
provenance; the others are listed as weak, to be labelled again.

    python -m jobs.accept_labels --set round=20261201-101500 --set export=project-3.json
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.labeling import label_sets
from slipway.labeling.quality import agreement, consensus, gold_accuracy, label_matrix
from slipway.labeling.tasks import read_annotations
from slipway.storage import Storage


class AcceptConfig(JobConfig):
    """Which round, its export, and the bar for accepting a consensus label."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$")
    round: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the round the tasks came from")
    export: str = Field(description="Label Studio JSON export of the round's project")
    min_quality: float = Field(default=0.5, ge=0, le=1,
                               description="consensus quality (CROWDLAB) needed to accept")
    min_annotators: int = Field(default=2, ge=1, description="annotations an item needs")


def main(cfg: AcceptConfig) -> dict[str, Any]:
    """Judge the round's annotations and write the accepted labels; return the summary."""
    storage = Storage(cfg.storage.root)
    folder = ("labeling", cfg.project, "rounds", cfg.round)
    if not storage.exists(*folder, "round.json"):
        raise JobFailed(f"no round {cfg.round!r} of {cfg.project} under "
                        f"{storage.uri(*folder[:-1])}; run jobs.select_for_labeling first")
    meta = storage.read_json(*folder, "round.json")
    classes = meta["classes"]
    picks = pd.read_parquet(io.BytesIO(storage.read_bytes(*folder, "picks.parquet"))
                            ).set_index("item")
    with open(cfg.export) as f:
        annotations = read_annotations(json.load(f), classes)
    foreign = sorted(set(annotations["item"]) - set(picks.index))
    if foreign:
        raise JobFailed(f"export: items {foreign[:3]} are not in round {cfg.round}; export the "
                        "project this round's tasks.json was imported into")
    gold = picks.loc[picks["reason"] == "gold", "gold_label"]
    scored = gold_accuracy(annotations, gold) if len(gold) else pd.Series(dtype=float)
    labelled = annotations[~annotations["item"].isin(gold.index)]
    counts = labelled.groupby("item").size()
    enough = counts.index[counts >= cfg.min_annotators]
    matrix = label_matrix(labelled[labelled["item"].isin(enough)], classes)
    if matrix.empty:
        raise JobFailed(f"no item of round {cfg.round} has {cfg.min_annotators} annotations yet; "
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
        "source_round": cfg.round})
    summary = {
        "round": cfg.round, "annotations": len(annotations), "items": len(matrix),
        "accepted": int(good.sum()), "weak": result.weak(cfg.min_quality).tolist(),
        "agreement": agreed,
        "annotator_quality": result.annotators["quality"].to_dict(),
        "gold_accuracy": scored.to_dict(),
        "consensus_changes_majority": int((result.items["label"] != result.items["majority"])
                                          .sum())}
    summary["label_set_version"] = label_sets.accept(
        storage, cfg.project, accepted, round=cfg.round, model=meta["model"],
        agreement=agreed, annotator_quality=summary["annotator_quality"],
        gold_accuracy=summary["gold_accuracy"]) if len(accepted) else None
    storage.write_json(summary, *folder, "accepted.json")
    print(f"{cfg.project} round {cfg.round}: {len(annotations)} annotations of {len(matrix)} "
          f"items; Fleiss kappa {agreed['fleiss_kappa']}, Krippendorff alpha "
          f"{agreed['krippendorff_alpha']:.3f}")
    for name, quality in sorted(summary["annotator_quality"].items(), key=lambda kv: -kv[1]):
        gold_part = f", gold accuracy {scored[name]:.2f}" if name in scored else ""
        print(f"  annotator {name}: quality {quality:.3f}{gold_part}")
    print(f"accepted {summary['accepted']} labels as label set v{summary['label_set_version']}; "
          f"{len(summary['weak'])} weak items to label again")
    return summary


if __name__ == "__main__":
    run_job(AcceptConfig, main, __doc__)

"""Pick this round's items worth labeling from what `/v1/classify` served, and write them as
Label Studio tasks.

Every text the app classified (since `since`) is a candidate, identified by a hash of its text, so
repeated traffic is one item. The budget goes to known-answer gold items (`gold`: a CSV or Parquet
file with `text` and `label`), then to another label for items of accepted rounds whose labels are
least certain (`relabel_share`, cleanlab's ActiveLab on their annotations and served
probabilities), then to the most uncertain texts (the served probabilities), skipping near-copies
on the MiniLM embeddings (slipway/labeling/selection.py). Items of earlier rounds are never picked
again as new items, and items still in flight not at all. The round lands under
`<root>/labeling/<project>/rounds/<round>/`: `tasks.json` (import it into Label Studio, with the
model's answer as pre-annotation), `config.xml` (the project's labeling config), `round.json`
(classes, model, and the Label Studio project), written last, and `picks.parquet` (what was picked
and why, with the served probabilities). With `label_studio` set, the round also becomes a Label
Studio project: the tasks are imported with the model's predictions, through the SDK.

    python -m jobs.select_for_labeling --set project=article_topic --set selection.budget=50
"""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig, UtcDatetime
from slipway.labeling.quality import label_matrix
from slipway.labeling.rounds import annotated, earlier_items, item_id
from slipway.labeling.selection import SelectionSettings, select
from slipway.labeling.studio import LabelStudio, StudioSettings
from slipway.labeling.tasks import labeling_config, tasks
from slipway.models.text import Embedder
from slipway.predictions import classified_texts, read_log
from slipway.storage import Storage


class SelectConfig(JobConfig):
    """What to select from, how many, and where the round goes."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$",
                         description="the labeling project (one label set)")
    model: str | None = Field(default=None, description="only answers of this served model")
    since: UtcDatetime | None = Field(default=None, description="only answers from then on")
    round: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$",
                              description="round name (default: the UTC time)")
    selection: SelectionSettings = SelectionSettings(budget=50)
    gold: str | None = Field(default=None, description="CSV or Parquet of known answers: text, "
                                                       "label")
    encoder: str = "all-MiniLM-L6-v2"
    max_length: int = Field(default=64, ge=8)
    label_studio: StudioSettings | None = Field(
        default=None, description="push the round to this Label Studio server (else files only)")


def main(cfg: SelectConfig) -> pd.DataFrame:
    """Select the round's items and write its tasks; return the picks."""
    storage = Storage(cfg.storage.root)
    name = cfg.round or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = ("labeling", cfg.project, "rounds", name)
    if storage.exists(*folder, "round.json"):
        raise JobFailed(f"round {name!r} of {cfg.project} exists; pick another (--set round=)")
    log = read_log(storage, "/v1/classify", model=cfg.model)
    if cfg.since is not None:
        log = log.filter(pc.field("timestamp") >= cfg.since)
    if log.num_rows == 0:
        raise JobFailed(f"no /v1/classify answers under {storage.uri('predictions')}"
                        f"{' since ' + str(cfg.since) if cfg.since else ''}; serve traffic first")
    served, probs, classes = classified_texts(log)
    served["item"] = served["text"].map(item_id)
    latest = ~served["item"].duplicated(keep="last").to_numpy()  # a repeated text: its newest
    earlier = earlier_items(storage, cfg.project)
    fresh = latest & ~served["item"].isin(earlier).to_numpy()  # earlier rounds' items: never
    served, probs = served[fresh].reset_index(drop=True), probs[fresh]
    if served.empty:
        raise JobFailed(f"every text served{' since ' + str(cfg.since) if cfg.since else ''} "
                        "was picked by an earlier round; serve more traffic first")
    gold = pd.DataFrame({"text": [], "label": [], "item": []})
    if cfg.gold:
        gold = pd.read_csv(cfg.gold) if cfg.gold.endswith(".csv") else pd.read_parquet(cfg.gold)
        unknown = sorted(set(gold["label"]) - set(classes))
        if unknown:
            raise JobFailed(f"gold: labels {unknown} are not among the model's {classes}")
        gold = gold.assign(item=gold["text"].map(item_id))
    embeddings = Embedder(cfg.encoder, cfg.max_length).embed(served["text"].tolist())
    # Labelled items of accepted rounds may get another label (ActiveLab), never those in flight.
    given, labelled = annotated(storage, cfg.project, classes)
    matrix = label_matrix(given, classes) if len(given) else None
    picks = select(served["item"].to_numpy(), probs, embeddings, cfg.selection,
                   exclude=earlier_items(storage, cfg.project, in_flight=True),
                   labelled=matrix, gold=gold["item"].tolist(), labelled_probs=None
                   if matrix is None else np.stack(labelled.loc[matrix.index, "probabilities"]))
    known = gold.drop_duplicates("item").set_index("item")
    is_gold = (picks["reason"] == "gold").to_numpy()
    picks["gold_label"] = known["label"].reindex(picks["item"]).to_numpy()
    text = pd.concat([served.set_index("item")["text"], labelled["text"], known["text"]])
    picks["text"] = text[~text.index.duplicated()].reindex(picks["item"]).to_numpy()
    # The served probabilities travel with the round: the consensus weighs them in later.
    pool = pd.concat([pd.Series(list(probs), index=served["item"]), labelled["probabilities"]])
    picks["probabilities"] = None
    picks.loc[~is_gold, "probabilities"] = pool[~pool.index.duplicated()].reindex(
        picks.loc[~is_gold, "item"]).to_numpy()
    last = log.num_rows - 1
    model = f"{log['model'][last].as_py()}@{log['model_version'][last].as_py()}"
    made = tasks(picks[~is_gold], np.stack(picks.loc[~is_gold, "probabilities"]), classes, model)
    made += [{"data": {"text": known.at[item, "text"], "item": item}}  # no pre-annotation
             for item in picks.loc[is_gold, "item"]]
    order = np.random.default_rng(cfg.selection.seed).permutation(len(made))  # gold hidden
    made = [made[i] for i in order]
    config = labeling_config(classes)
    storage.write_json(made, *folder, "tasks.json")
    storage.write_whole(config.encode(), *folder, "config.xml")
    buffer = io.BytesIO()
    picks.to_parquet(buffer, index=False)
    storage.write_whole(buffer.getvalue(), *folder, "picks.parquet")
    studio = None
    if cfg.label_studio:  # a failed push leaves no round.json: the round can run again
        studio = {"url": cfg.label_studio.url, "project": LabelStudio(cfg.label_studio).push(
            f"{cfg.project} {name}", config, made)}
    storage.write_json({"project": cfg.project, "round": name, "classes": classes,
                        "model": model, "created_at": time.time(), "label_studio": studio},
                       *folder, "round.json")
    picks.attrs["round"] = name
    counts = picks["reason"].value_counts().to_dict()
    print(f"{cfg.project} round {name}: {len(picks)} items {counts} of {len(served)} served "
          f"texts -> {storage.uri(*folder, 'tasks.json')}"
          + (f"; Label Studio project {studio['project']} at {studio['url']}" if studio else ""))
    return picks


if __name__ == "__main__":
    run_job(SelectConfig, main, __doc__)

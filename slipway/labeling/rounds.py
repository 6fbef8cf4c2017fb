"""A project's labeling rounds on the storage root and the items they hold.

    labeling/<project>/rounds/<round>/  tasks.json, config.xml, picks.parquet, round.json (written
                                        last: a round without it is incomplete), and once
                                        accepted export.json and accepted.json (written last:
                                        a round with it is accepted)
"""

from __future__ import annotations

import hashlib
import io

import pandas as pd

from slipway.labeling.tasks import read_annotations
from slipway.storage import Storage


def item_id(text: str) -> str:
    """A text's item id: the same text is the same item, whoever sent it and when."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rounds(storage: Storage, project: str) -> list[str]:
    """The project's complete rounds (those with a `round.json`), oldest first."""
    made = [uri.rsplit("/", 2)[1] for uri in storage.list_files("labeling", project, "rounds")
            if uri.endswith("/round.json")]
    return sorted(made, key=lambda name: storage.read_json(
        "labeling", project, "rounds", name, "round.json")["created_at"])


def is_accepted(storage: Storage, project: str, name: str) -> bool:
    """Whether the round's annotations were judged and accepted (its `accepted.json`)."""
    return storage.exists("labeling", project, "rounds", name, "accepted.json")


def earlier_items(storage: Storage, project: str, in_flight: bool = False) -> set[str]:
    """Items picked by any earlier round of the project, labelled or still in flight (with
    `in_flight`: only those of rounds not accepted yet)."""
    return {item for name in rounds(storage, project)
            if not (in_flight and is_accepted(storage, project, name))
            for item in picks(storage, project, name)["item"]}


def picks(storage: Storage, project: str, name: str) -> pd.DataFrame:
    """A round's picks: item, reason, score, gold label, text and served probabilities."""
    return pd.read_parquet(io.BytesIO(storage.read_bytes(
        "labeling", project, "rounds", name, "picks.parquet")))


def annotated(storage: Storage, project: str, classes: list[str]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the accepted rounds know of their items, gold left out:
    the annotations (`item`, `annotator`, `label`; an annotator's newest label of an item) and
    each item's newest pick (indexed by item: text, probabilities)."""
    frames, picked = [], []
    for name in rounds(storage, project):
        folder = ("labeling", project, "rounds", name)
        if not is_accepted(storage, project, name):
            continue
        round_picks = picks(storage, project, name)
        labelled = set(round_picks.loc[round_picks["reason"] != "gold", "item"])
        given = read_annotations(storage.read_json(*folder, "export.json"), classes)
        frames.append(given[given["item"].isin(labelled)])
        picked.append(round_picks[round_picks["item"].isin(labelled)])
    if not frames:
        return (pd.DataFrame(columns=["item", "annotator", "label"]),
                pd.DataFrame(columns=["text", "probabilities"]))
    given = pd.concat(frames, ignore_index=True).drop_duplicates(["item", "annotator"],
                                                                   keep="last")
    newest = pd.concat(picked, ignore_index=True).drop_duplicates("item", keep="last")
    return given[["item", "annotator", "label"]], newest.set_index("item")

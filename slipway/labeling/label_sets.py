"""Versioned label sets: a project's accepted labels, one immutable version per acceptance.

    labeling/<project>/label_sets/<NNNN>/labels.parquet  item, text, label and each label's
                                                          provenance (who, when, quality, round)
    labeling/<project>/label_sets/<NNNN>/manifest.json   version, parent, rows, classes, counts,
                                                          and what the caller records (agreement)

A new version is the latest one with the accepted labels applied: new items added, relabelled
items replaced. Its number is claimed exclusively (two acceptances never share one), its labels
written, and its manifest written last: readers see only versions with a manifest. Acceptances of
one project are meant to run one at a time (a round's job); each records its parent, so a
concurrent one would show as two versions with the same parent. Train the text classifier on a
version with `text.label_set=<project>` (the latest) or `<project>@N`: the labels' path, with its
version number, lands in the model's lineage.
"""

from __future__ import annotations

import io
import time
from collections.abc import Collection
from typing import Any

import pandas as pd

from slipway.errors import SlipwayError
from slipway.storage import Storage

REQUIRED = ("item", "text", "label")


def _folder(project: str, version: int) -> tuple[str, ...]:
    return "labeling", project, "label_sets", f"{version:04d}"


def labels_path(project: str, version: int) -> str:
    """Where a version's labels are, relative to the storage root."""
    return "/".join((*_folder(project, version), "labels.parquet"))


def versions(storage: Storage, project: str, claimed: bool = False) -> list[int]:
    """Published version numbers (with `claimed`, also those still being written), ascending."""
    name = ".claim" if claimed else "manifest.json"
    return sorted({int(uri.rsplit("/", 2)[1]) for uri in storage.list_files(
        "labeling", project, "label_sets") if uri.endswith("/" + name)})


def read(storage: Storage, project: str, version: int | None = None
         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A version's labels and manifest (the latest published when `version` is None)."""
    published = versions(storage, project)
    if not published:
        raise SlipwayError(f"no label set for {project!r} under "
                           f"{storage.uri('labeling', project)}; accept labels first")
    version = published[-1] if version is None else version
    if version not in published:
        raise SlipwayError(f"{project} has no label set version {version}; versions: {published}")
    folder = _folder(project, version)
    labels = pd.read_parquet(io.BytesIO(storage.read_bytes(*folder, "labels.parquet")))
    return labels, storage.read_json(*folder, "manifest.json")


def accept(storage: Storage, project: str, accepted: pd.DataFrame,
           removed: Collection[str] = (), **record: Any) -> int:
    """Write the next version: the latest labels with `accepted` applied (columns `item`,
    `text`, `label`, and any provenance columns) and the `removed` items left out; `record` goes
    into the manifest. Returns the version number."""
    missing = [c for c in REQUIRED if c not in accepted.columns]
    if missing:
        raise SlipwayError(f"accepted labels lack columns {missing}; give item, text and label")
    if accepted["item"].duplicated().any():
        item = accepted.loc[accepted["item"].duplicated(), "item"].iloc[0]
        raise SlipwayError(f"item {item}: accepted twice in one batch; keep one label per item")
    parent = (versions(storage, project) or [None])[-1]
    base = read(storage, project, parent)[0] if parent else accepted.iloc[:0]
    replaced = base["item"].isin(accepted["item"])
    dropped = base["item"].isin(list(removed)) & ~replaced
    labels = pd.concat([base[~replaced & ~dropped], accepted], ignore_index=True)
    while True:  # claim the next number for this caller alone
        version = (versions(storage, project, claimed=True) or [0])[-1] + 1
        if storage.create_exclusive(b"", *_folder(project, version), ".claim"):
            break
    buffer = io.BytesIO()
    labels.to_parquet(buffer, index=False)
    storage.write_whole(buffer.getvalue(), *_folder(project, version), "labels.parquet")
    storage.write_json({"project": project, "version": version, "parent": parent,
                        "created_at": time.time(), "rows": len(labels),
                        "added": int((~accepted["item"].isin(base["item"])).sum()),
                        "relabelled": int(replaced.sum()), "removed": int(dropped.sum()),
                        "classes": sorted(labels["label"].unique()),
                        "counts": labels["label"].value_counts().sort_index().to_dict(),
                        **record}, *_folder(project, version), "manifest.json")
    return version

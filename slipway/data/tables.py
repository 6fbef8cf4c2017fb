"""Reading a user-named table: a CSV, JSON-lines or Parquet file or folder, local or remote."""

from __future__ import annotations

import pandas as pd
import ray

from slipway.errors import SlipwayError
from slipway.storage import Storage


def locate(path: str, storage: Storage) -> tuple[Storage, tuple[str, ...]]:
    """The storage and parts of `path`: absolute paths and URIs stand alone, relative paths are
    under the storage root."""
    if "://" in path or path.startswith("/"):
        return Storage(path), ()
    return storage, tuple(path.split("/"))


def read_table(path: str, storage: Storage, field: str) -> pd.DataFrame:
    """All rows of the table at `path`, read with Ray Data; `field` names the config key that
    set `path`, for the error when nothing is there."""
    where, parts = locate(path, storage)
    files = where.list_files(*parts)
    if not files:
        raise SlipwayError(f"{field}: no files at {where.uri(*parts)}; point it at a CSV, "
                        "JSON-lines or Parquet file or folder")
    if all(f.endswith(".csv") for f in files):
        return ray.data.read_csv(files).to_pandas()
    if all(f.endswith((".jsonl", ".json")) for f in files):
        return ray.data.read_json(files, lines=True).to_pandas()
    return ray.data.read_parquet(files).to_pandas()

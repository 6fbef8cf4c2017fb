"""Generate the demo content platform's raw data into `<root>/raw/`, as files of a chosen format.

`bad_row_fraction` corrupts that share of rows in text formats (CSV, JSONL), the way real
deliveries arrive, so that ingestion has something to quarantine.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field

from slipway.cli import run_job
from slipway.config import JobConfig, StrictModel
from slipway.data.generate import GeneratorConfig, World, generate, public
from slipway.storage import Storage
from slipway.tracking import track_run

Format = Literal["csv", "jsonl", "parquet"]
_CORRUPTIONS = {
    "user_id": ["abc", "", "-7"],
    "article_id": ["", "1.5"],
    "event_timestamp": ["not-a-date", "2026-13-45T00:00:00"],
    "clicked": ["maybe"],
    "dwell_seconds": ["-3.0", "lots"],
    "country": ["", "Atlantis"],
    "device": ["fridge"],
}


class Output(StrictModel):
    """How one table is written."""

    format: Format = "parquet"
    files: int = Field(default=1, ge=1)
    bad_row_fraction: float = Field(default=0.0, ge=0, le=1)


class Outputs(StrictModel):
    """How each table lands under raw/."""

    articles: Output = Output()
    users: Output = Output()
    events: Output = Output()


class GenerateConfig(JobConfig):
    """Generator settings and outputs."""

    generator: GeneratorConfig = GeneratorConfig()
    outputs: Outputs = Outputs()


def corrupt(df: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """Return `df` as text with `fraction` of rows given an invalid value in one column."""
    text = df.astype(object).where(df.notna(), None)
    for col in text.columns:
        if pd.api.types.is_datetime64_any_dtype(df[col]):
            text[col] = df[col].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    candidates = [c for c in _CORRUPTIONS if c in df.columns]
    n_bad = int(round(fraction * len(df)))
    if n_bad and candidates:
        rows = rng.choice(len(df), size=n_bad, replace=False)
        for row in rows:
            col = candidates[rng.integers(len(candidates))]
            text.iat[row, text.columns.get_loc(col)] = rng.choice(_CORRUPTIONS[col])
    return text


def write_table(df: pd.DataFrame, name: str, out: Output, storage: Storage, seed: int) -> int:
    """Write `df` under raw/<name>/ in `out.files` parts; return the number of files."""
    storage.remove("raw", name)
    storage.makedirs("raw", name)
    rng = np.random.default_rng(seed)
    if out.format != "parquet":
        df = corrupt(df, out.bad_row_fraction, rng)
    for i, part in enumerate(np.array_split(np.arange(len(df)), out.files)):
        chunk = df.iloc[part]
        with storage.open_output("raw", name, f"part-{i:04d}.{out.format}") as f:
            if out.format == "parquet":
                pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), f)
            elif out.format == "csv":
                text = chunk.astype(str).where(chunk.notna(), None)
                pacsv.write_csv(pa.Table.from_pandas(text, preserve_index=False), f)
            else:
                f.write("".join(json.dumps(r, default=str) + "\n"
                                for r in chunk.to_dict("records")).encode())
    return out.files


def main(cfg: GenerateConfig) -> World:
    """Generate the world and write each table under raw/."""
    storage = Storage(cfg.storage.root)
    with track_run("generate", cfg, storage) as run:
        world = generate(cfg.generator)
        tables = {"articles": world.articles, "users": world.users, "events": world.events}
        for offset, (name, out) in enumerate(cfg.outputs):
            write_table(public(tables[name]), name, out, storage, cfg.generator.seed + offset)
            run.add_data_version(f"raw/{name}", storage.version("raw", name))
        run.log({f"{name}_rows": len(df) for name, df in tables.items()})
    print(f"generated {', '.join(f'{len(df):,} {n}' for n, df in tables.items())} "
          f"under {storage.uri('raw')}")
    return world


if __name__ == "__main__":
    run_job(GenerateConfig, main, __doc__)

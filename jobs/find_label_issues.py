"""Find likely wrong labels in a version of a project's label set, for a person to review.

Each labelled text is embedded with MiniLM and predicted by a logistic regression that never saw
it (k-fold); cleanlab's confident learning flags the rows whose given label the predictions find
implausible (slipway/labeling/issues.py). The report, likeliest first, lands beside the version:
`labeling/<project>/label_sets/<NNNN>/issues.csv` with item, text, given and suggested label,
label quality and provenance, and an empty `accept` column. Mark the rows to fix with `true` and
apply the review with `--set apply=<reviewed csv>`: the suggested labels of the accepted rows
become the next label-set version.

    python -m jobs.find_label_issues --set project=article_topic
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.data.tables import locate
from slipway.labeling import label_sets
from slipway.labeling.issues import label_issues, out_of_fold_probabilities
from slipway.models.text import Embedder
from slipway.storage import Storage


class IssuesConfig(JobConfig):
    """Which label set to check, how, or which reviewed report to apply."""

    project: str = Field(default="article_topic", pattern=r"^[A-Za-z0-9_-]+$")
    version: int | None = Field(default=None, ge=1, description="default: the latest")
    folds: int = Field(default=5, ge=2)
    encoder: str = "all-MiniLM-L6-v2"
    max_length: int = Field(default=64, ge=8)
    apply: str | None = Field(default=None, description="a reviewed issues.csv (`accept` column "
                              "true on the rows to fix): write the next version with them fixed")


def find(cfg: IssuesConfig, storage: Storage) -> pd.DataFrame:
    """Rank the version's likely label errors and write the report; return it."""
    labels, manifest = label_sets.read(storage, cfg.project, cfg.version)
    classes = sorted(labels["label"].unique())
    smallest = labels["label"].value_counts().min()
    if smallest < cfg.folds:
        raise JobFailed(f"label set {cfg.project} v{manifest['version']}: a class has "
                        f"{smallest} labels, fewer than folds={cfg.folds}; lower folds or label "
                        "more")
    features = Embedder(cfg.encoder, cfg.max_length).embed(labels["text"].tolist())
    given = labels["label"].map(classes.index).to_numpy()
    found = label_issues(given, out_of_fold_probabilities(features, given, cfg.folds), classes)
    rows = labels.iloc[found["row"]].reset_index(drop=True)
    report = pd.concat([rows[["item", "text"]], found[["given", "suggested", "quality"]],
                        rows.drop(columns=["item", "text", "label"])], axis=1).assign(accept="")
    buffer = io.StringIO()
    report.to_csv(buffer, index=False)
    folder = ("labeling", cfg.project, "label_sets", f"{manifest['version']:04d}")
    uri = storage.write_whole(buffer.getvalue().encode(), *folder, "issues.csv")
    print(f"label set {cfg.project} v{manifest['version']}: {len(report)} likely label errors "
          f"in {len(labels)} labels ({len(report) / len(labels):.1%}) -> {uri}")
    for row in report.head(5).itertuples():
        print(f"  {row.given} -> {row.suggested} (quality {row.quality:.3f}): {row.text[:70]!r}")
    return report


def apply(cfg: IssuesConfig, storage: Storage) -> int:
    """Write the next version with the reviewed report's accepted suggestions; return it."""
    where, parts = locate(cfg.apply, storage)
    review = pd.read_csv(io.BytesIO(where.read_bytes(*parts)), dtype={"accept": str})
    missing = [c for c in ("item", "text", "suggested", "accept") if c not in review.columns]
    if missing:
        raise JobFailed(f"apply: {cfg.apply} lacks columns {missing}; give the issues.csv this "
                        "job wrote, with `accept` filled in")
    chosen = review[review["accept"].fillna("").str.strip().str.lower().isin(["true", "yes",
                                                                             "1", "x"])]
    if chosen.empty:
        raise JobFailed(f"apply: no row of {cfg.apply} has accept=true; mark the rows to fix")
    labels, manifest = label_sets.read(storage, cfg.project)
    gone = sorted(set(chosen["item"]) - set(labels["item"]))
    if gone:
        raise JobFailed(f"apply: items {gone[:3]} are not in label set {cfg.project} "
                        f"v{manifest['version']}")
    unknown = sorted(set(chosen["suggested"]) - set(manifest["classes"]))
    if unknown:
        raise JobFailed(f"apply: suggested labels {unknown} are not in the label set "
                        f"{manifest['classes']}")
    fixed = labels.set_index("item").loc[chosen["item"]].reset_index().assign(
        label=chosen["suggested"].to_numpy(), source_round="review")
    version = label_sets.accept(storage, cfg.project, fixed, round="review",
                                review=str(cfg.apply))
    print(f"label set {cfg.project} v{version}: {len(fixed)} labels fixed from {cfg.apply}")
    return version


def main(cfg: IssuesConfig) -> Any:
    """Find issues, or apply a reviewed report."""
    storage = Storage(cfg.storage.root)
    return apply(cfg, storage) if cfg.apply else find(cfg, storage)


if __name__ == "__main__":
    run_job(IssuesConfig, main, __doc__)

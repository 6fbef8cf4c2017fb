"""Find likely wrong labels, outliers and near-duplicates in a version of a project's label set,
for a person to review.

Each labelled text is embedded with MiniLM and predicted by a logistic regression that never saw
it (k-fold); cleanlab's confident learning flags the rows whose given label the predictions find
implausible, and its Datalab the rows far from all others (outliers) and the sets of rows nearly
identical (near-duplicates) on the same embeddings (slipway/labeling/issues.py). The report lands
beside the version: `labeling/<project>/label_sets/<NNNN>/issues.csv`, one row per finding
(`issue`: label, outlier or near_duplicate; most severe first within each), with item, text,
given and suggested label, score, the near-duplicate set's items, provenance, and an empty
`accept` column. Mark the rows to act on with `true` and apply the review with
`--set apply=<reviewed csv>`: accepted label issues take the suggested label, accepted outliers
and near-duplicates leave the label set, in its next version.

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
from slipway.labeling.issues import data_issues, label_issues, out_of_fold_probabilities
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
    wrong = label_issues(given, out_of_fold_probabilities(features, given, cfg.folds), classes)
    other = data_issues(features, given)
    items = labels["item"].to_numpy()
    found = pd.concat([
        wrong.rename(columns={"quality": "score"}).assign(issue="label", duplicate_of=""),
        other.assign(given=labels["label"].to_numpy()[other["row"]], suggested="",
                     duplicate_of=[",".join(items[d]) for d in other["duplicate_of"]])],
        ignore_index=True)
    rows = labels.iloc[found["row"]].reset_index(drop=True)
    report = pd.concat([rows[["item", "text"]],
                        found[["issue", "given", "suggested", "score", "duplicate_of"]],
                        rows.drop(columns=["item", "text", "label"])], axis=1).assign(accept="")
    buffer = io.StringIO()
    report.to_csv(buffer, index=False)
    folder = ("labeling", cfg.project, "label_sets", f"{manifest['version']:04d}")
    uri = storage.write_whole(buffer.getvalue().encode(), *folder, "issues.csv")
    counts = report["issue"].value_counts().reindex(["label", "outlier", "near_duplicate"],
                                                    fill_value=0)
    print(f"label set {cfg.project} v{manifest['version']}: {counts['label']} likely label "
          f"errors, {counts['outlier']} outliers, {counts['near_duplicate']} near-duplicates in "
          f"{len(labels)} labels -> {uri}")
    for row in report[report["issue"] == "label"].head(5).itertuples():
        print(f"  {row.given} -> {row.suggested} (quality {row.score:.3f}): {row.text[:70]!r}")
    return report


def apply(cfg: IssuesConfig, storage: Storage) -> int:
    """Write the next version with the reviewed report's accepted suggestions; return it."""
    where, parts = locate(cfg.apply, storage)
    review = pd.read_csv(io.BytesIO(where.read_bytes(*parts)), dtype={"accept": str})
    missing = [c for c in ("item", "issue", "suggested", "accept") if c not in review.columns]
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
    relabel = chosen[chosen["issue"] == "label"].drop_duplicates("item")
    unknown = sorted(set(relabel["suggested"]) - set(manifest["classes"]))
    if unknown:
        raise JobFailed(f"apply: suggested labels {unknown} are not in the label set "
                        f"{manifest['classes']}")
    fixed = labels.set_index("item").loc[relabel["item"]].reset_index().assign(
        label=relabel["suggested"].to_numpy(), source_round="review")
    dropped = sorted(set(chosen.loc[chosen["issue"] != "label", "item"]) - set(relabel["item"]))
    version = label_sets.accept(storage, cfg.project, fixed, removed=dropped, round="review",
                                review=str(cfg.apply))
    print(f"label set {cfg.project} v{version}: {len(fixed)} labels fixed and {len(dropped)} "
          f"rows removed from {cfg.apply}")
    return version


def main(cfg: IssuesConfig) -> Any:
    """Find issues, or apply a reviewed report."""
    storage = Storage(cfg.storage.root)
    return apply(cfg, storage) if cfg.apply else find(cfg, storage)


if __name__ == "__main__":
    run_job(IssuesConfig, main, __doc__)

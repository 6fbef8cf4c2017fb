"""Evaluate a registered engagement model on the held-out split that no training step saw.

Reports accuracy, precision, recall, macro-F1, ROC-AUC, log-loss and ECE overall and per slice
(country, device, topic) with underperforming slices flagged, plus a reliability diagram and a
confusion matrix. Results land beside the model version (`evaluation/<split-run>/`) and in W&B.
With `against` set (e.g. `champion`), that version is scored on the same rows too.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.evaluation import (
    calibration_table,
    classification_metrics,
    plot_confusion,
    plot_reliability,
    slice_metrics,
)
from slipway.models.engagement import Preprocessor
from slipway.registry import ModelVersion, Registry, RegistryError
from slipway.storage import Storage
from slipway.tracking import track_run


class EvaluateConfig(JobConfig):
    """Which version to evaluate, against what, and how slices are judged."""

    model_name: str = "engagement"
    ref: str = "challenger"
    against: str | None = "champion"
    slices: list[str] = Field(default_factory=lambda: ["user_country", "user_device",
                                                       "article_topic"])
    slice_metric: str = "roc_auc"
    slice_tolerance: float = Field(default=0.05, ge=0)
    min_slice_size: int = Field(default=30, ge=1)


@dataclass
class Evaluation:
    """Metrics of the evaluated version (and of `against`, on the same rows, if present)."""

    version: ModelVersion
    metrics: dict[str, float]
    slices: list[dict]
    against: dict[str, float] | None
    report_uri: str


def score(registry: Registry, name: str, ref: str | int, rows: pd.DataFrame
          ) -> tuple[np.ndarray, ModelVersion]:
    """Click probabilities of a registered version for feature rows."""
    model, mv = registry.load(name, ref)
    prep = Preprocessor(**mv.metadata["preprocessing"])
    with torch.no_grad():
        logits = model(torch.from_numpy(prep.transform(rows)))
    return torch.sigmoid(logits).numpy(), mv


def main(cfg: EvaluateConfig) -> Evaluation:
    """Score the held-out split, write the report and plots, log to W&B."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("evaluate", cfg, storage) as run:
        try:
            mv = registry.get(cfg.model_name, cfg.ref)
        except RegistryError as exc:
            raise JobFailed(f"{exc}; train one with `python -m jobs.train`") from None
        test = pd.read_parquet(f"{mv.metadata['splits_uri']}/test.parquet")
        y = test["label"].to_numpy()
        proba, _ = score(registry, cfg.model_name, mv.version, test)
        metrics = classification_metrics(y, proba)
        slices = slice_metrics(test, y, proba, cfg.slices, cfg.slice_metric,
                               cfg.min_slice_size, cfg.slice_tolerance)
        against = None
        if cfg.against and cfg.against in registry.aliases(cfg.model_name):
            other, other_mv = score(registry, cfg.model_name, cfg.against, test)
            against = {"version": other_mv.version, **classification_metrics(y, other)}
        split = mv.metadata["splits_uri"].rstrip("/").rsplit("/", 1)[-1]
        folder = ("evaluation", split)
        report = {"model": cfg.model_name, "version": mv.version, "rows": len(test),
                  "metrics": metrics, "slices": slices, "against": against,
                  "flagged_slices": [s["slice"] for s in slices if s["flagged"]]}
        uri = registry.write_file(cfg.model_name, mv.version,
                                  json.dumps(report, indent=2).encode(), *folder, "report.json")
        with tempfile.TemporaryDirectory() as tmp:
            plot_reliability(calibration_table(y, proba)[0], f"{tmp}/reliability.png")
            plot_confusion(y, (proba > 0.5).astype(int), ["no click", "click"],
                           f"{tmp}/confusion.png")
            for png in ("reliability.png", "confusion.png"):
                with open(f"{tmp}/{png}", "rb") as f:
                    registry.write_file(cfg.model_name, mv.version, f.read(), *folder, png)
                if run.wandb_run is not None:
                    import wandb

                    run.wandb_run.log({png[:-4]: wandb.Image(f"{tmp}/{png}")})
        run.log({f"test/{k}": v for k, v in metrics.items()})
        if run.wandb_run is not None:
            import wandb

            run.wandb_run.log({"slices": wandb.Table(dataframe=pd.DataFrame(slices))})
    buf = io.StringIO()
    pd.DataFrame(slices).set_index("slice")[["size", "roc_auc", "accuracy", "flagged"]].to_string(
        buf, float_format=lambda v: f"{v:.3f}")
    print(f"{cfg.model_name} v{mv.version} on {len(test):,} held-out rows: "
          + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if against:
        print(f"  {cfg.against} v{against['version']} on the same rows: roc_auc "
              f"{against['roc_auc']:.3f}, log_loss {against['log_loss']:.3f}")
    print(buf.getvalue())
    print(f"report: {uri}")
    return Evaluation(version=mv, metrics=metrics, slices=slices, against=against,
                      report_uri=uri)


if __name__ == "__main__":
    run_job(EvaluateConfig, main, __doc__)

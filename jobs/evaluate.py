"""Evaluate a registered model on the held-out split that no training or tuning step saw.

Reports accuracy, precision, recall, macro-F1, ROC-AUC, log-loss and ECE overall and per slice
(engagement: country, device, topic; text: class and text length) with underperforming slices
flagged, a reliability diagram and a confusion matrix, and for text classifiers the behavioural
checks of `behaviour_checks` (a YAML file) with pass/fail per case. Results land beside the model
version (`evaluation/<split-run>/`) and in W&B. With `against` set (e.g. `champion`), that
version is scored on the same rows too. A text classifier is always shown beside the lexical
baseline (TF-IDF + logistic regression, `slipway.models.lexical`) trained on its own training
rows and scored on the same held-out rows, so a model that loses to it does not go unseen.
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

from slipway.behaviour import load_checks, run_checks
from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.evaluation import (
    calibration_table,
    classification_metrics,
    plot_confusion,
    plot_reliability,
    slice_metrics,
)
from slipway.models.lexical import NAME as BASELINE
from slipway.models.lexical import LexicalTextClassifier
from slipway.models.scoring import TASK_SLICE_METRIC, TASK_SLICES, predict_labels, predict_proba
from slipway.registry import ModelVersion, Registry, RegistryError
from slipway.storage import Storage
from slipway.tracking import track_run


class EvaluateConfig(JobConfig):
    """Which version to evaluate, against what, and how slices are judged."""

    model_name: str = "engagement"
    ref: str | int = Field(default="challenger", description="alias or version number")
    against: str | None = "champion"
    slices: list[str] | None = Field(default=None, description="None: the task's slices")
    slice_metric: str | None = Field(default=None, description="None: the task's metric")
    slice_tolerance: float = Field(default=0.05, ge=0)
    min_slice_size: int = Field(default=30, ge=1)
    behaviour_checks: str | None = Field(default=None,
                                         description="YAML file of behavioural checks (text)")


@dataclass
class Evaluation:
    """Metrics of the evaluated version (and of `against`, on the same rows, if present)."""

    version: ModelVersion
    metrics: dict[str, float]
    slices: list[dict]
    against: dict[str, float] | None
    baseline: dict[str, float] | None
    behaviour: dict | None
    report_uri: str


def score(registry: Registry, name: str, ref: str | int, rows: pd.DataFrame
          ) -> tuple[np.ndarray, ModelVersion, torch.nn.Module]:
    """Probabilities of a registered version for held-out rows, with the version and model."""
    model, mv = registry.load(name, ref)
    return predict_proba(model, mv, rows), mv, model


def main(cfg: EvaluateConfig) -> Evaluation:
    """Score the held-out split, write the report and plots, log to W&B."""
    storage = Storage(cfg.storage.root)
    registry = Registry(storage)
    with track_run("evaluate", cfg, storage) as run:
        try:
            mv = registry.get(cfg.model_name, cfg.ref)
        except RegistryError as exc:
            raise JobFailed(f"{exc}; train one with `python -m jobs.train`") from None
        task, labels = mv.metadata["task"], mv.metadata["labels"]
        test = pd.read_parquet(f"{mv.metadata['splits_uri']}/test.parquet")
        y = test["label"].to_numpy()
        proba, _, model = score(registry, cfg.model_name, mv.version, test)
        metrics = classification_metrics(y, proba)
        slices = slice_metrics(test, y, proba, cfg.slices or TASK_SLICES[task],
                               cfg.slice_metric or TASK_SLICE_METRIC[task],
                               cfg.min_slice_size, cfg.slice_tolerance)
        baseline = None
        if task == "text":  # the lexical baseline, trained on the model's own training rows
            train = pd.read_parquet(f"{mv.metadata['splits_uri']}/train.parquet")
            lexical = LexicalTextClassifier.fit(train["text"], train["label"], len(labels))
            baseline = classification_metrics(y, lexical.predict_proba(test["text"]))
            run.log({f"baseline/{k}": v for k, v in baseline.items()})
        candidates = None
        compared = registry.read_file(cfg.model_name, mv.version, "candidates.json")
        if compared:  # trained as the best of several candidates: each on the same rows
            candidates = json.loads(compared)
            for name, entry in candidates["candidates"].items():
                entry["test"] = metrics if entry["version"] == mv.version else \
                    classification_metrics(y, score(registry, cfg.model_name, entry["version"],
                                                    test)[0])
                run.log({f"candidates/{name}/macro_f1": entry["test"]["macro_f1"]})
        behaviour = None
        if cfg.behaviour_checks:
            if task != "text":
                raise JobFailed(f"behaviour_checks apply to text classifiers; {cfg.model_name} "
                                f"is a {task} model: remove behaviour_checks")
            behaviour = run_checks(load_checks(cfg.behaviour_checks), lambda texts: predict_labels(
                predict_proba(model, mv, pd.DataFrame({"text": texts})), labels))
            run.log({f"behaviour/{k}": v for k, v in behaviour["pass_rates"].items()})
        against = None
        if cfg.against and cfg.against in registry.aliases(cfg.model_name):
            other, other_mv, _ = score(registry, cfg.model_name, cfg.against, test)
            against = {"version": other_mv.version, **classification_metrics(y, other)}
        split = mv.metadata["splits_uri"].rstrip("/").rsplit("/", 1)[-1]
        folder = ("evaluation", split)
        report = {"model": cfg.model_name, "version": mv.version, "rows": len(test),
                  "metrics": metrics, "slices": slices, "against": against,
                  "baseline": baseline and {"name": BASELINE, **baseline},
                  "candidates": candidates, "behaviour": behaviour,
                  "flagged_slices": [s["slice"] for s in slices if s["flagged"]]}
        uri = registry.write_file(cfg.model_name, mv.version,
                                  json.dumps(report, indent=2).encode(), *folder, "report.json")
        with tempfile.TemporaryDirectory() as tmp:
            plot_reliability(calibration_table(y, proba)[0], f"{tmp}/reliability.png")
            pred = (proba > 0.5).astype(int) if proba.ndim == 1 else proba.argmax(axis=1)
            plot_confusion(y, pred, labels, f"{tmp}/confusion.png")
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
    if baseline:
        gap = metrics["macro_f1"] - baseline["macro_f1"]
        print(f"  {BASELINE} baseline on the same rows (trained on the same training rows): "
              f"macro_f1 {baseline['macro_f1']:.3f}, accuracy {baseline['accuracy']:.3f}; the "
              f"model is {abs(gap):.3f} macro-F1 {'above' if gap >= 0 else 'BELOW'} it")
    if candidates:
        print("  candidates (trained on the same rows): " + ", ".join(
            f"{name} v{c['version']} valid macro_f1 {c['valid_macro_f1']:.3f}, test "
            f"{c['test']['macro_f1']:.3f}" for name, c in candidates["candidates"].items())
            + f"; {candidates['best']} won on validation")
    print(buf.getvalue())
    if behaviour:
        failed = [c for c in behaviour["cases"] if not c["passed"]]
        print("behavioural checks " + ("passed" if behaviour["passed"] else "FAILED") + ": "
              + ", ".join(f"{k} {v:.0%}" for k, v in behaviour["pass_rates"].items())
              + "".join(f"\n  failed {c['kind']}: {c['text']!r} -> {c['got']} "
                        f"(expected {c['expected']})" for c in failed[:10]))
    print(f"report: {uri}")
    return Evaluation(version=mv, metrics=metrics, slices=slices, against=against,
                      baseline=baseline, behaviour=behaviour, report_uri=uri)


if __name__ == "__main__":
    run_job(EvaluateConfig, main, __doc__)

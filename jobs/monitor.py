"""Monitor a served model from its prediction log: data drift per feature, embedding drift of text
inputs, prediction drift and, once labels arrive, performance against the baseline.

Each run cuts the logged rows into windows (by time or count), compares each window with the
reference (a split of the model's data, or a logged window) and writes a JSON summary and an HTML
report under `<root>/monitoring/<name>/<run_id>/` and to W&B. Checks over their thresholds in the
latest window alert (log line and webhook, deduplicated across runs), set Ray metrics gauges, can
submit a retraining job and can make the job exit non-zero. `loop_every` runs it on a schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import Duration, JobConfig, StrictModel
from slipway.models.text import Embedder
from slipway.monitoring.alerts import AlertSettings, notify
from slipway.monitoring.checks import (
    DriftSettings,
    PerformanceSettings,
    degradation,
    embedding_drift,
    performance,
    prediction_drift,
    univariate,
    window_checks,
)
from slipway.monitoring.frames import (
    ReferenceSettings,
    WindowSettings,
    feature_columns,
    join_labels,
    training_reference,
    windows,
)
from slipway.monitoring.report import render
from slipway.predictions import compact, flatten, read_log
from slipway.registry import Registry
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run


class RetrainSettings(StrictModel):
    """Submit a Ray job when a check newly crosses its threshold."""

    enabled: bool = False
    entrypoint: str = "python -m jobs.train --config configs/train_engagement.yaml"
    address: str | None = Field(default=None, description="Ray dashboard URL; None: "
                                "RAY_ADDRESS, else the local cluster")
    runtime_env: dict | None = None


class MonitorConfig(JobConfig):
    """What to monitor, against what, and what to do about it."""

    name: str = Field(default="engagement", pattern=r"^[A-Za-z0-9_.-]+$")
    route: str = "/v1/rank"
    model: str = Field(default="engagement", description="registry name; filters the log")
    seed: int = 0
    reference: ReferenceSettings = ReferenceSettings()
    windows: WindowSettings = WindowSettings()
    drift: DriftSettings = DriftSettings()
    performance: PerformanceSettings = PerformanceSettings()
    alerts: AlertSettings = AlertSettings()
    retrain: RetrainSettings = RetrainSettings()
    loop_every: Duration | None = Field(default=None, description="run again after this long")


@dataclass
class MonitorResult:
    """The run's summary (as written to JSON), where the report is, and what alerted."""

    summary: dict
    report_uri: str
    alerts: dict
    retrain_job: str | None


def _results(results: dict) -> dict:
    return {k: r.to_dict() for k, r in results.items()}


def check_window(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
                 embeddings: tuple[np.ndarray, np.ndarray] | None, baseline: dict[str, float],
                 cfg: MonitorConfig) -> dict:
    """Every check of one window, JSON-ready."""
    out: dict = {"start": str(current["timestamp"].min()), "end": str(current["timestamp"].max()),
                 "rows": len(current), "tested": len(current) >= cfg.windows.min_rows}
    if out["tested"]:
        out["features"] = _results(univariate(reference, current, columns, cfg.drift))
        if cfg.drift.prediction:
            out["prediction"] = _results(prediction_drift(reference, current, cfg.drift))
        if embeddings is not None:
            ref_x, cur_x = embeddings
            out["embedding"] = embedding_drift(ref_x, cur_x[current.index.to_numpy()], cfg.drift,
                                               cfg.seed).to_dict()
    if cfg.performance.enabled:
        out["labelled"] = int(current["label"].notna().sum())
        if out["labelled"] >= cfg.performance.min_labels:
            out["metrics"] = performance(current)
            out["degradation"] = degradation(out["metrics"], baseline,
                                             cfg.performance.tolerances)
    return out


def active_checks(summary: dict) -> dict[str, str]:
    """Checks over threshold: drift in the latest tested window, degradation in the latest
    window with enough labels (labels lag, so that one may be older)."""
    active = {}
    tested = [w for w in summary["windows"] if w["tested"]]
    if tested:
        latest = tested[-1]
        for key, r in window_checks(latest).items():
            if r["drifted"]:
                active[key] = (f"{key} drifted in the window from {latest['start'][:16]}: "
                               f"{r['method']} {r['statistic']:.3g}"
                               + (f", p={r['p_value']:.2g}" if r["p_value"] is not None else "")
                               + f" (score {r['score']:.2f}, threshold {r['threshold']:.3g})")
    labelled = [w for w in summary["windows"] if w.get("degradation")]
    if labelled:
        window = labelled[-1]
        for name, d in window["degradation"].items():
            if d["degraded"]:
                active[f"performance:{name}"] = (
                    f"{name} {d['value']:.3f} vs baseline {d['baseline']:.3f} in the window "
                    f"from {window['start'][:16]} ({window['labelled']} labels): worse by "
                    f"{d['worse_by']:.3f}, tolerance {d['tolerance']}")
    return active


def export_gauges(name: str, summary: dict) -> None:
    """Latest scores as Ray metrics gauges (Prometheus: slipway_monitor_score and
    slipway_monitor_active), while this process lives."""
    from ray.util.metrics import Gauge

    score = Gauge("slipway_monitor_score", "Monitor check score (>= 1: over threshold)",
                  tag_keys=("monitor", "check"))
    tested = [w for w in summary["windows"] if w["tested"]]
    for key, r in (window_checks(tested[-1]) if tested else {}).items():
        score.set(r["score"], tags={"monitor": name, "check": key})
    for window in [w for w in summary["windows"] if w.get("degradation")][-1:]:
        for key, d in window["degradation"].items():
            score.set(d["score"], tags={"monitor": name, "check": f"performance:{key}"})
    Gauge("slipway_monitor_active", "Checks over threshold", tag_keys=("monitor",)).set(
        len(summary["active"]), tags={"monitor": name})


def submit_retraining(settings: RetrainSettings, reason: str) -> str:
    """Submit the retraining entrypoint as a Ray job; return its submission id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.address)  # None: RAY_ADDRESS, else the local cluster
    return client.submit_job(entrypoint=settings.entrypoint, runtime_env=settings.runtime_env,
                             metadata={"trigger": "slipway monitor", "reason": reason[:500]})


def run_once(cfg: MonitorConfig) -> MonitorResult:
    """One monitoring pass over the log."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    with track_run("monitor", cfg, storage) as run:
        compact(storage, cfg.route, before=datetime.now(timezone.utc).date())  # finished days
        log = read_log(storage, cfg.route, cfg.model)
        if log.num_rows == 0:
            raise JobFailed(f"no logged {cfg.route} answers of model {cfg.model!r} under "
                            f"{storage.uri('predictions')}; serve traffic first, or check "
                            "`route` and `model`")
        rows = flatten(log, cfg.route)
        version = int(rows["model_version"].iloc[-1])
        if cfg.reference.kind == "training":
            reference = training_reference(Registry(storage), cfg.model, version, cfg.reference,
                                           cfg.seed)
            current = rows
        else:
            at = rows["timestamp"]
            start = pd.Timestamp(cfg.reference.start) if cfg.reference.start else at.min()
            end = pd.Timestamp(cfg.reference.end)
            reference = rows[(at >= start) & (at < end)]
            current = rows[at >= end]
            if len(reference) < cfg.windows.min_rows:
                raise JobFailed(f"the reference window has {len(reference)} rows, fewer "
                                f"than windows.min_rows={cfg.windows.min_rows}; move "
                                "reference.start / reference.end")
            if len(reference) > cfg.reference.max_rows:
                reference = reference.sample(cfg.reference.max_rows, random_state=cfg.seed)
        if current.empty:
            raise JobFailed("no logged rows after the reference window; lower reference.end")
        if cfg.performance.enabled:
            current = join_labels(current, storage, cfg.performance.labels)
            if cfg.reference.kind == "window":
                reference = join_labels(reference, storage, cfg.performance.labels)
        current = current.reset_index(drop=True)
        reference = reference.reset_index(drop=True)
        embeddings = None
        if cfg.drift.embedding.enabled and "text" in current and "text" in reference:
            sample = reference.sample(min(len(reference), cfg.drift.embedding.max_rows),
                                      random_state=cfg.seed)
            embedder = Embedder(cfg.drift.embedding.encoder, cfg.drift.embedding.max_length)
            embeddings = (embedder.embed(sample["text"].tolist()),
                          embedder.embed(current["text"].tolist()))
        columns = feature_columns(reference, current, cfg.drift.features, cfg.drift.exclude)
        baseline = cfg.performance.baseline or (
            performance(reference) if cfg.performance.enabled and "label" in reference else {})
        parts = windows(current, cfg.windows)
        summary = {
            "monitor": cfg.name, "route": cfg.route, "model": f"{cfg.model} v{version}",
            "run_id": run.run_id, "generated_at": datetime.now(timezone.utc).isoformat(),
            "reference": {"kind": cfg.reference.kind, "rows": len(reference),
                          "baseline": baseline},
            "features": columns,
            "windows": [check_window(reference, part, columns, embeddings, baseline, cfg)
                        for part in parts],
        }
        summary["latest"] = next((w for w in reversed(summary["windows"]) if w["tested"]),
                                 summary["windows"][-1])
        summary["active"] = active_checks(summary)
        folder = ("monitoring", cfg.name, run.run_id)
        storage.write_json(summary, *folder, "summary.json")
        page = render(summary, reference, parts[-1])
        with storage.open_output(*folder, "report.html") as f:
            f.write(page.encode())
        report_uri = storage.uri(*folder, "report.html")
        summary_metrics = {f"score/{k}": v["score"]
                           for k, v in summary["latest"].get("features", {}).items()}
        run.log({**summary_metrics, "active_checks": len(summary["active"])})
        if run.wandb_run is not None:
            import wandb

            run.wandb_run.log({"report": wandb.Html(page)})
        export_gauges(cfg.name, summary)
        alerts = notify(cfg.name, summary["active"], storage, cfg.alerts, report_uri,
                        datetime.now(timezone.utc))
        retrain_job = None
        if cfg.retrain.enabled and alerts["sent"]:
            retrain_job = submit_retraining(cfg.retrain, "; ".join(alerts["sent"]))
            print(f"submitted retraining job {retrain_job}: {cfg.retrain.entrypoint}")
    verdict = ("DRIFT: " + "; ".join(summary["active"]) if summary["active"]
               else "OK: no check over its threshold")
    print(f"{cfg.name} ({summary['model']}, {len(parts)} windows, latest "
          f"{summary['latest']['rows']:,} rows): {verdict}\nreport: {report_uri}")
    return MonitorResult(summary=summary, report_uri=report_uri, alerts=alerts,
                         retrain_job=retrain_job)


def main(cfg: MonitorConfig) -> MonitorResult:
    """Run once (or every `loop_every` until stopped); fail when asked and a check is over."""
    while True:
        result = run_once(cfg)
        if cfg.alerts.fail_on_alert and result.summary["active"]:
            raise JobFailed(f"{len(result.summary['active'])} monitor check(s) over threshold: "
                            + ", ".join(result.summary["active"]))
        if cfg.loop_every is None:
            return result
        time.sleep(cfg.loop_every.total_seconds())


if __name__ == "__main__":
    run_job(MonitorConfig, main, __doc__)

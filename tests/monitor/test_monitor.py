"""The monitor on replayed logs of generated worlds with injected drift: the drifted features and
only those are flagged, concept drift is flagged once labels arrive, alerts reach a webhook once,
and a retraining job is submitted to Ray."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from jobs.monitor import MonitorConfig, main, run_once
from slipway.config import load_config
from slipway.errors import SlipwayError
from slipway.storage import Storage
from tests.metrics import samples, scrape
from tests.monitor.conftest import DRIFT_START, DWELL_FEATURES

# Two-day windows from Jan 31: three end before the drift starts, one holds its first day, three
# follow; the last, half-day window is too small to test (min_rows).
SETTINGS = ["windows.size=2D", "windows.last=null", "windows.min_rows=1000",
            "tracking.mode=disabled"]


def monitor(root: str, *overrides: str) -> MonitorConfig:
    return load_config(MonitorConfig, "configs/monitor.yaml",
                       [f"storage.root={root}", *SETTINGS, *overrides])


def split(windows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Tested windows that end before the drift, and those that start after it."""
    start = pd.Timestamp(DRIFT_START, tz="UTC")
    tested = [w for w in windows if w["tested"]]
    return ([w for w in tested if pd.Timestamp(w["end"]) < start],
            [w for w in tested if pd.Timestamp(w["start"]) >= start])


def flagged(window: dict) -> set[str]:
    return {k for k, r in window["features"].items() if r["drifted"]}


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received.clear()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_feature_drift_flags_the_drifted_features_and_only_those(drift_roots, webhook):
    root = drift_roots["feature"]
    result = run_once(monitor(root, f"alerts.webhook_url={webhook}"))
    before, after = split(result.summary["windows"])
    assert len(before) == 3 and len(after) == 3
    for window in before:  # no injected drift yet: nothing flagged, performance holds
        assert flagged(window) == set(), window["start"]
        assert not any(d["degraded"] for d in window["degradation"].values())
    for window in after:
        assert flagged(window) == DWELL_FEATURES, window["start"]
    # The alert names exactly the drifted features and links the report.
    assert len(Hook.received) == 1
    text = Hook.received[0]["text"]
    assert all(f"feature:{name}" in text for name in DWELL_FEATURES)
    assert "user_ctr_7d" not in text and result.report_uri in text
    assert set(result.alerts["sent"]) >= {f"feature:{n}" for n in DWELL_FEATURES}
    storage = Storage(root)
    report = result.report_uri.removeprefix(storage.root + "/").split("/")
    page = storage.read_bytes(*report).decode()
    assert "user_dwell_mean_7d" in page and page.count("data:image/png;base64") >= 3
    summary = storage.read_json(*report[:-1], "summary.json")
    assert set(summary["active"]) == set(result.summary["active"])
    # The scores are live gauges on Ray's Prometheus endpoint.
    text = scrape(lambda t: "slipway_monitor_active" in t and "user_dwell_mean_7d" in t)
    scores = {labels["check"]: value for labels, value
              in samples(text, "ray_slipway_monitor_score", monitor="engagement")}
    assert all(scores[f"feature:{name}"] >= 1.0 for name in DWELL_FEATURES), scores
    assert scores["feature:user_ctr_7d"] < 1.0
    active = samples(text, "ray_slipway_monitor_active", monitor="engagement")
    assert [value for _, value in active] == [len(result.summary["active"])]
    # The drift persists: the next run alerts no one (deduplicated) but still reports it.
    again = run_once(monitor(root, f"alerts.webhook_url={webhook}"))
    assert again.summary["active"].keys() == result.summary["active"].keys()
    assert again.alerts["sent"] == [] and len(Hook.received) == 1
    # Orchestrators can stop on it.
    with pytest.raises(SlipwayError, match="over threshold"):
        main(monitor(root, "alerts.fail_on_alert=true"))


def test_concept_drift_is_flagged_by_performance_once_labels_arrive(drift_roots, ray_session):
    root = drift_roots["concept"]
    storage = Storage(root)
    # Labels so far: clicks up to the drift only (later ones have not arrived).
    events = pd.read_parquet(storage.uri("curated", "events"))
    early = events[events["event_timestamp"] < pd.Timestamp(DRIFT_START, tz="UTC")]
    storage.makedirs("labels", "early")
    early.to_parquet(storage.uri("labels", "early", "part-0.parquet"))
    waiting = run_once(monitor(root, "performance.labels.path=labels/early",
                               "name=concept-early"))
    assert not any(k.startswith("performance:") for k in waiting.summary["active"])

    retrain = "python -c \"print('retraining on fresh data')\""
    dashboard = f"http://{ray_session.dashboard_url}"  # the run's Ray
    result = run_once(monitor(root, "retrain.enabled=true", f"retrain.entrypoint={retrain}",
                              f"retrain.address={dashboard}"))
    before, after = split(result.summary["windows"])
    for window in before:
        assert not any(d["degraded"] for d in window["degradation"].values()), window["start"]
    for window in after:
        assert window["degradation"]["roc_auc"]["degraded"], window["start"]
    assert "performance:roc_auc" in result.summary["active"]
    # The retraining job ran on the session's Ray.
    client = JobSubmissionClient(dashboard)
    deadline = time.monotonic() + 300
    while client.get_job_status(result.retrain_job) not in (JobStatus.SUCCEEDED,
                                                            JobStatus.FAILED):
        assert time.monotonic() < deadline, "retraining job did not finish"
        time.sleep(1)
    assert client.get_job_status(result.retrain_job) == JobStatus.SUCCEEDED
    assert "retraining on fresh data" in client.get_job_logs(result.retrain_job)

"""The topic classifier's monitor over the app's own prediction log: texts sent to /v1/classify,
first two batches like the training data, then one where every text is about sports. The monitor
flags the third batch's embeddings and predicted labels, and nothing in the second."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from jobs.monitor import MonitorConfig, run_once
from slipway.config import load_config
from slipway.data.generate import GeneratorConfig, generate
from slipway.predictions import read_log
from slipway.storage import Storage

BATCH = 300


def titles(seed: int, **world) -> list[str]:
    """`BATCH` fresh article titles from the generator (the training data's distribution)."""
    cfg = GeneratorConfig(seed=seed, num_articles=BATCH, num_users=1, num_events=1, **world)
    return generate(cfg).articles["title"].tolist()


def classify_all(api, texts: list[str], storage: Storage) -> None:
    """Classify `texts`, 50 per request, and wait until those requests' rows are in the
    prediction log (by their request ids: rows of earlier tests may still be on their way)."""
    ids = {f"topics-{uuid.uuid4().hex}": texts[i:i + 50] for i in range(0, len(texts), 50)}
    for request_id, chunk in ids.items():
        assert api.post("/v1/classify", json={"texts": chunk},
                        headers={"X-Request-ID": request_id}).status_code == 200
    deadline = time.monotonic() + 120
    while not set(ids) <= set(read_log(storage, "/v1/classify")["request_id"].to_pylist()):
        assert time.monotonic() < deadline, "the classify answers were not logged"
        time.sleep(0.5)


def test_topic_monitor_flags_embedding_and_label_drift_of_served_texts(api, platform_root):
    storage = Storage(platform_root)
    start = datetime.now(timezone.utc)
    classify_all(api, titles(101), storage)
    reference_end = datetime.now(timezone.utc)
    classify_all(api, titles(102), storage)
    classify_all(api, titles(103, topic_weights={"sports": 1.0}), storage)

    result = run_once(load_config(MonitorConfig, "configs/monitor_topics.yaml", [
        f"storage.root={platform_root}", "tracking.mode=disabled", "reference.kind=window",
        f"reference.start={start.isoformat()}", f"reference.end={reference_end.isoformat()}",
        f"windows.rows={BATCH}"]))
    same, sports = result.summary["windows"]
    assert same["rows"] == sports["rows"] == BATCH
    assert not same["embedding"]["drifted"], same["embedding"]
    assert not any(r["drifted"] for r in same["prediction"].values()), same["prediction"]
    assert sports["embedding"]["drifted"] and sports["embedding"]["statistic"] > 0.8
    assert sports["prediction"]["prediction"]["drifted"]
    assert {"embedding", "prediction:prediction"} <= set(result.summary["active"])
    print("embedding AUC {:.3f} -> {:.3f}; label drift p {:.2g} -> {:.2g}".format(
        same["embedding"]["statistic"], sports["embedding"]["statistic"],
        same["prediction"]["prediction"]["p_value"], sports["prediction"]["prediction"]["p_value"]))

"""Reading Ray's Prometheus endpoint on this node, as a scraper would."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import ray


def scrape(until: Callable[[str], bool], timeout_s: float = 180) -> str:
    """The endpoint's text once `until(text)` holds (Ray exports every few seconds), or the last
    text read when `timeout_s` runs out."""
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if until(text):
            break
        time.sleep(2)
    return text


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample called `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

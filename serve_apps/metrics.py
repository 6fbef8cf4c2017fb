"""Prometheus metrics per route and model, through Ray's metrics (they show in the Ray dashboard
and on each node's metrics export port, prefixed `ray_`)."""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]


class RouteMetrics:
    """Requests, errors and latency, tagged by route, model and status code."""

    def __init__(self) -> None:
        self.requests = Counter("slipway_requests_total", "Requests answered, by status",
                                tag_keys=("route", "model", "status"))
        self.errors = Counter("slipway_errors_total", "Requests answered with a 4xx or 5xx",
                              tag_keys=("route", "model", "status"))
        self.latency = Histogram("slipway_request_latency_ms", "Time to answer, in ms",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route", "model"))

    def observe(self, route: str, model: str, status: int, latency_ms: float) -> None:
        """Count one answered request."""
        tags = {"route": route, "model": model or "none", "status": str(status)}
        self.requests.inc(tags=tags)
        if status >= 400:
            self.errors.inc(tags=tags)
        self.latency.observe(latency_ms, tags={"route": route, "model": model or "none"})

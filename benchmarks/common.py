"""Helpers every benchmark shares: the environment block and writing JSON plus a table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def env_info(packages: tuple[str, ...]) -> dict:
    """CPU count, Python and package versions, and the date of the run."""
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
            **{name: version(name) for name in packages}}


def start_ray() -> None:
    """A quiet local Ray on every core for one benchmark run, set up as jobs start theirs
    (slipway.runtime): no auth, no W&B, no hub."""
    for name, value in (("RAY_AUTH_MODE", "disabled"), ("SLIPWAY_PROGRESS", "0"),
                        ("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
        os.environ.setdefault(name, value)
    import ray

    from slipway.runtime import configure_data, system_config

    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False,
             _system_config=system_config(os.cpu_count()))
    configure_data()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest-rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def write_results(name: str, results: dict, table: list[tuple[str, str]]) -> Path:
    """Write `results/NAME.json` and print a two-column table."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(k) for k, _ in table)
    print(f"\n{name} benchmark -> {path}")
    for key, value in table:
        print(f"  {key:<{width}}  {value}")
    return path


def update_results(name: str, values: dict, table: list[tuple[str, str]]) -> Path:
    """Set `values` in the existing `results/NAME.json` (a benchmark's `--only` part), print
    `table`."""
    path = RESULTS / f"{name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    return write_results(name, {**results, **values}, table)

"""Drift detectors: power and false-alarm rate at 100, 1,000 and 10,000 rows per side, and the
detection delay on a stream, on samples of the generated world.

Columns: clicked impressions' dwell seconds (numeric; drift: dwell x1.1), the device of each
impression's user (categorical; drift: desktop and tablet traffic x1.25), and MiniLM embeddings
of article titles (drift: twice the technology share). Each trial draws a reference and a current
sample (with replacement) from the clean pool, or the reference from the clean pool and the
current from the drifted one; a detector alarms at alpha 0.05 or past its default threshold.
False-alarm rates come with their exact (Clopper-Pearson) 99% interval: 400 trials per size, and
1,000 for the significance tests (KS, chi-squared), whose rate must be alpha; so a test holding
alpha 0.05 is told apart from one that does not (20 trials could not: 4 alarms in 20, once read
as a 20% rate for chi-squared at 10,000 rows, happens by chance).
The stream: a 2,000-row reference, then windows of 500 rows, clean for 10 windows and drifted
after; the delay is the number of drifted windows seen before the first alarm (0: the first).
"""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.common import env_info, write_results
from slipway.data.generate import DriftSpec, GeneratorConfig, generate
from slipway.models.text import DEFAULT_ENCODER, Embedder
from slipway.monitoring.detectors import Result, compare, correct, domain_classifier

SIZES = (100, 1000, 10_000)
TRIALS = {100: 400, 1000: 400, 10_000: 400}
SIGNIFICANCE_TRIALS = 1000  # per size, for the tests whose false-alarm rate must be alpha
EMBEDDING_TRIALS = {100: 20, 1000: 10, 10_000: 3}
NUMERIC = ("ks", "ks_distance", "wasserstein", "jensenshannon", "psi")
CATEGORICAL = ("chi2", "jensenshannon", "psi")
START = date(2026, 1, 1)


def pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(clean, drifted) pools per column."""
    base = GeneratorConfig(seed=5, num_users=5000, num_articles=200, num_events=150_000)
    worlds = {
        "clean": generate(base),
        "drifted": generate(base.model_copy(update={"drift": DriftSpec(
            start=START, dwell_scale=1.1,
            device_weights={"mobile": 1.0, "desktop": 1.25, "tablet": 1.25})})),
    }
    out: dict[str, list[np.ndarray]] = {"dwell_seconds": [], "device": []}
    for world in worlds.values():
        events = world.events.merge(world.users[["user_id", "device"]], on="user_id")
        out["dwell_seconds"].append(events.loc[events["clicked"], "dwell_seconds"].to_numpy())
        out["device"].append(events["device"].to_numpy())
    titles = []
    for weights in ({}, {"technology": 2.0}):
        topic = dict.fromkeys(("technology", "sports", "politics", "science", "business",
                               "entertainment"), 1.0) | weights
        articles = generate(GeneratorConfig(seed=6, num_articles=12_000, num_events=1,
                                            num_users=1, topic_weights=topic)).articles
        titles.append(articles["title"].to_numpy(dtype=object))
    embedder = Embedder(DEFAULT_ENCODER, 64)
    out["title_embedding"] = [embedder.embed(t.tolist(), batch_size=512) for t in titles]
    return {k: (v[0], v[1]) for k, v in out.items()}


def detect(method: str, ref: np.ndarray, cur: np.ndarray, seed: int) -> bool:
    """Whether one detector alarms on one pair of samples."""
    if method == "domain_classifier":
        result: Result = domain_classifier(ref, cur, seed=seed)
    else:
        result = compare(pd.Series(ref, name="x"), pd.Series(cur, name="x"), method)
    return correct({"x": result}, 0.05, "none")["x"].drifted


def detectors() -> list[tuple[str, str]]:
    """(name in the results, column) pairs."""
    return ([(f"{m}:dwell_seconds", "dwell_seconds") for m in NUMERIC]
            + [(f"{m}:device", "device") for m in CATEGORICAL]
            + [("domain_classifier:title_embedding", "title_embedding")])


def rates(data: dict, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Power, false-alarm rate and the rate's 99% interval per detector and size."""
    power: dict[str, dict[str, float]] = {}
    false_alarm: dict[str, dict[str, float]] = {}
    interval: dict[str, dict[str, list[float]]] = {}
    for name, column in detectors():
        method = name.split(":")[0]
        clean, drifted = data[column]
        power[name], false_alarm[name], interval[name] = {}, {}, {}
        for n in SIZES:
            trials = (EMBEDDING_TRIALS if column == "title_embedding" else TRIALS)[n]
            if method in ("ks", "chi2"):
                trials = SIGNIFICANCE_TRIALS
            hits = alarms = 0
            for t in range(trials):
                ref = clean[rng.integers(len(clean), size=n)]
                alarms += detect(method, ref, clean[rng.integers(len(clean), size=n)], t)
                hits += detect(method, ref, drifted[rng.integers(len(drifted), size=n)], t)
            power[name][f"n{n}"] = hits / trials
            false_alarm[name][f"n{n}"] = alarms / trials
            ci = stats.binomtest(alarms, trials).proportion_ci(0.99, method="exact")
            interval[name][f"n{n}"] = [round(ci.low, 4), round(ci.high, 4)]
    return power, false_alarm, interval


def delays(data: dict, rng: np.random.Generator, seeds: int = 10, window: int = 500,
           clean_windows: int = 10, drift_windows: int = 10) -> tuple[dict, dict]:
    """Mean drifted windows before the first alarm, and alarms per clean window, per detector."""
    delay, early = {}, {}
    for name, column in detectors():
        method = name.split(":")[0]
        clean, drifted = data[column]
        waits, alarms = [], 0
        for _ in range(seeds if column != "title_embedding" else 3):
            ref = clean[rng.integers(len(clean), size=2000)]
            for w in range(clean_windows):
                alarms += detect(method, ref, clean[rng.integers(len(clean), size=window)], w)
            wait = drift_windows  # not found within the stream
            for w in range(drift_windows):
                if detect(method, ref, drifted[rng.integers(len(drifted), size=window)], w):
                    wait = w
                    break
            waits.append(wait)
        delay[name] = float(np.mean(waits))
        early[name] = alarms / (clean_windows * len(waits))
    return delay, early


def main() -> None:
    """Run every detector and write results/drift.json."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    data = pools()
    power, false_alarm, interval = rates(data, rng)
    delay, stream_false_alarm = delays(data, rng)
    results = {"power": power, "false_alarm_rate": false_alarm,
               "false_alarm_rate_ci99": interval,
               "detection_delay_windows": delay,
               "stream_false_alarms_per_clean_window": stream_false_alarm,
               "settings": {"alpha": 0.05, "trials": TRIALS, "embedding_trials": EMBEDDING_TRIALS,
                            "significance_trials": SIGNIFICANCE_TRIALS,
                            "stream": {"reference_rows": 2000, "window_rows": 500,
                                       "clean_windows": 10, "drifted_windows": 10},
                            "domain_classifier_max_rows_per_side": 5000},
               "seconds": round(time.perf_counter() - start, 1),
               "env": env_info(("scipy", "scikit-learn", "numpy"))}
    table = [(name, " ".join(f"n{n}: power {power[name][f'n{n}']:.2f} / false "
                             f"{false_alarm[name][f'n{n}']:.2f}" for n in SIZES)
              + f" | delay {delay[name]:.1f}") for name, _ in detectors()]
    write_results("drift", results, table)


if __name__ == "__main__":
    main()

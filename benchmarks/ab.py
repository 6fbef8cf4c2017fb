"""A/B analysis on many seeded simulated experiments: false positives (one look, naive daily
peeking, the sequential test looked at daily), power at a planted lift, CUPED's variance
reduction and SRM detection of a planted 52/48 split bug.

Each experiment: `UNITS` users assigned by the real hash (slipway.experiments.assignment) with
a salt per seed; each user has a click propensity p ~ Beta(2, 8), visits 1 + Poisson(2) times
spread over `DAYS` days, sees 3 articles per visit and clicks each with p (times 1 + lift in the
treatment). The CUPED covariate is the user's pre-experiment CTR over 30 earlier impressions. The
analysis is the shipped one (slipway.experiments.analysis.analyze) on exposure and event tables
shaped as the app writes them. `exposures_per_s` (the ingress with assignment on and off) comes
from `benchmarks/serve.py --only ab`, which runs the app.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.common import RESULTS, env_info, write_results
from slipway.experiments.analysis import AnalysisSettings, analyze
from slipway.experiments.assignment import bucket
from slipway.experiments.config import Experiment

UNITS, DAYS, SHOWN = 4000, 10, 3
SRM_UNITS = 12_000  # a 52/48 split shows at p < 0.001 from about 10,000 units
TRIALS = {"aa": 300, "power": 100, "srm": 100}
LIFT = 0.10  # the planted relative lift in click probability
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def experiment(seed: int, split: float = 0.5) -> Experiment:
    """The simulated experiment's declaration (ended: the fixed-horizon test applies)."""
    return Experiment.model_validate({
        "name": f"sim-{seed}", "route": "/v1/rank", "unit": "user_id",
        "variants": [{"name": "control", "model": "engagement@champion", "weight": 1 - split},
                     {"name": "treatment", "model": "engagement@2", "weight": split}],
        "start": START, "end": START + timedelta(days=DAYS), "primary_metric": "clicks"})


def simulate(seed: int, lift: float = 0.0, lose_treatment: float = 0.0, size: int = UNITS
             ) -> tuple[Experiment, pd.DataFrame, pd.DataFrame, pd.Series]:
    """One experiment of `size` users: exposures, events and covariate. `lose_treatment`: the
    share of treatment units whose exposures are lost (the planted assignment or logging bug:
    a 50/50 split observed as 52/48 at 0.077)."""
    rng = np.random.default_rng(seed)
    exp = experiment(seed)
    units = np.arange(size)
    treated = np.array([bucket(exp.name, str(u)) < 0.5 for u in units])
    keep = ~(treated & (rng.random(size) < lose_treatment))
    p = rng.beta(2, 8, size)
    covariate = pd.Series(rng.binomial(30, p) / 30, index=units.astype(str))
    visits = 1 + rng.poisson(2, size)
    unit = np.repeat(units, visits)
    at = START + pd.to_timedelta(rng.uniform(0, DAYS * 86400, len(unit)), unit="s")
    prob = np.clip(p[unit] * np.where(treated[unit], 1 + lift, 1.0), 0, 1)
    clicks = rng.binomial(SHOWN, prob)
    request = np.array([f"r{i}" for i in range(len(unit))])
    exposures = pd.DataFrame({
        "request_id": request, "timestamp": at, "unit": unit.astype(str),
        "variant": np.where(treated[unit], "treatment", "control"),
        "latency_ms": rng.gamma(4, 5, len(unit)), "status": 200})[keep[unit]]
    events = pd.concat([
        pd.DataFrame({"request_id": request, "type": "impression", "value": float(SHOWN),
                      "timestamp": at}),
        pd.DataFrame({"request_id": request, "type": "click", "value": clicks.astype(float),
                      "timestamp": at})], ignore_index=True)
    return exp, exposures.reset_index(drop=True), events, covariate


def run(seed: int, settings: AnalysisSettings, **planted: float) -> dict:
    """The analysis of one simulated experiment."""
    exp, exposures, events, covariate = simulate(seed, **planted)
    return analyze(exp, exposures, events, covariate, settings, exp.end)


def rate(hits: int, trials: int) -> dict[str, float]:
    """A rate with its exact (Clopper-Pearson) 95% interval."""
    interval = stats.binomtest(hits, trials).proportion_ci(0.95)
    return {"rate": hits / trials, "ci95": [round(interval.low, 4), round(interval.high, 4)],
            "trials": trials}


def main() -> None:
    """Run the simulated experiments and write results/ab.json."""
    start = time.perf_counter()
    settings = AnalysisSettings(look_every="1D")
    one_look = peeking = sequential = 0
    for seed in range(TRIALS["aa"]):
        summary = run(seed, settings)
        looks = summary["sequential"]["treatment"]
        one_look += summary["metrics"]["treatment"]["clicks"]["p_value"] < settings.alpha
        peeking += any(look["p_value"] < settings.alpha for look in looks)
        sequential += looks[-1]["always_valid_p"] < settings.alpha
    detected, reductions = 0, []
    for seed in range(TRIALS["power"]):
        summary = run(10_000 + seed, settings, lift=LIFT)
        result = summary["metrics"]["treatment"]["clicks"]
        detected += result["significant"] and result["effect"] > 0
        reductions.append(result["cuped_variance_reduction"])
    srm_flags = sum(run(20_000 + seed, settings, lose_treatment=0.077, size=SRM_UNITS
                        )["srm"]["flagged"] for seed in range(TRIALS["srm"]))
    aa = TRIALS["aa"]
    results = {
        "aa_false_positive_rate": rate(one_look, aa),
        "aa_false_positive_rate_peeking_naive": rate(peeking, aa),
        "aa_false_positive_rate_sequential": rate(sequential, aa),
        "power": {**rate(detected, TRIALS["power"]), "planted_lift": LIFT},
        "cuped_variance_reduction": float(np.mean(reductions)),
        "srm_detection_rate": {**rate(srm_flags, TRIALS["srm"]), "planted_split": "52/48"},
        "settings": {"units": UNITS, "srm_units": SRM_UNITS, "days": DAYS, "alpha": settings.alpha,
                     "looks": "daily", "tau_sd": settings.tau, "srm_p": settings.srm_p},
        "seconds": round(time.perf_counter() - start, 1),
        "env": env_info(("scipy", "statsmodels", "numpy", "pandas")),
    }
    serve_path = RESULTS / "serve.json"
    if serve_path.exists():  # measured with the app by benchmarks/serve.py --only ab
        results["exposures_per_s"] = json.loads(serve_path.read_text()).get("exposures_per_s")
    table = [(k, json.dumps(v)) for k, v in results.items() if k not in ("env", "settings")]
    write_results("ab", results, table)


if __name__ == "__main__":
    main()

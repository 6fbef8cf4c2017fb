"""The statistics of an experiment: sample ratio mismatch, effects with intervals, CUPED,
always-valid sequential tests, multiple-testing correction, guardrails and the decision.

Units are the randomisation units (users). Per unit the analysis sums each outcome event type
over the unit's exposures; a mean metric (clicks per user) is compared with Welch's t-test, a
ratio metric (CTR = clicks / impressions, per user) with the delta method. The sequential test
is the normal-mixture mSPRT (Johari et al.): its always-valid p-value may be read at every look
without inflating false positives; its confidence sequence bounds the effect at all looks at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from slipway.config import StrictModel
from slipway.experiments.config import METRICS, Experiment


class AnalysisSettings(StrictModel):
    """How an experiment is judged."""

    alpha: float = Field(default=0.05, gt=0, lt=1)
    srm_p: float = Field(default=0.001, gt=0, lt=1, description="flag SRM below this p-value")
    correction: str = Field(default="holm", pattern="^(holm|fdr_bh)$",
                            description="holm (family-wise) or fdr_bh (Benjamini-Hochberg)")
    tau: float = Field(default=0.1, gt=0, description="mSPRT mixture scale, in control standard "
                                                      "deviations of the metric")
    cuped: bool = Field(default=True, description="adjust mean metrics by the covariate")
    look_every: str = Field(default="1D", description="pandas frequency of the sequential looks")


@dataclass
class Comparison:
    """A treatment against the control on one metric."""

    effect: float
    ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float
    variance: float  # of the effect estimate

    def as_dict(self) -> dict[str, Any]:
        return {"effect": self.effect, "ci": list(self.ci), "relative": self.relative,
                "relative_ci": list(self.relative_ci), "p_value": self.p_value}


def unit_table(exposures: pd.DataFrame, events: pd.DataFrame, by_user: bool = False
               ) -> pd.DataFrame:
    """One row per unit: its variant (its first exposure's), first exposure time, exposures, the
    number of variants it saw, and the summed value of each event type over its exposures.

    Events join their exposure by `request_id`; with `by_user` (the unit is the user id) an
    event with only a `user_id` counts for that user from its first exposure on."""
    firsts = exposures.sort_values("timestamp", kind="stable").groupby("unit", sort=True)
    units = pd.DataFrame({"variant": firsts["variant"].first(),
                          "first_seen": firsts["timestamp"].first(),
                          "exposures": firsts.size(),
                          "variants_seen": firsts["variant"].nunique()})
    joined = events.merge(exposures[["request_id", "unit"]], on="request_id", how="inner")
    if by_user and "user_id" in events:
        loose = events[events["request_id"].isna() & events["user_id"].notna()]
        loose = loose.assign(unit=loose["user_id"].astype("int64").astype(str)).join(
            units["first_seen"], on="unit", how="inner")
        loose = loose[loose["timestamp"] >= loose["first_seen"]]
        if len(loose):
            joined = pd.concat([joined, loose])
    sums = joined.pivot_table(index="unit", columns="type", values="value", aggfunc="sum")
    for kind in ("impression", "click", "dwell", "conversion"):
        units[kind] = sums[kind].reindex(units.index).fillna(0.0) if kind in sums else 0.0
    return units


def metric(units: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The metric's per-unit numerator and (for ratio metrics) denominator."""
    numerator, denominator = METRICS[name]
    return (units[numerator].to_numpy(float),
            None if denominator is None else units[denominator].to_numpy(float))


def level(units: pd.DataFrame, name: str) -> float:
    """The metric over these units: the mean per unit, or sum(numerator) / sum(denominator)."""
    num, den = metric(units, name)
    if den is not None:
        return float(num.sum() / den.sum()) if den.sum() else float("nan")
    return float(num.mean()) if len(num) else float("nan")


def srm(counts: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Chi-squared goodness of fit of units per variant against the configured weights."""
    observed = np.array([counts.get(v, 0) for v in weights], dtype=float)
    expected = observed.sum() * np.array(list(weights.values()))
    statistic, p = stats.chisquare(observed, expected)
    return {"counts": {v: int(c) for v, c in zip(weights, observed, strict=True)},
            "expected": {v: float(e) for v, e in zip(weights, expected, strict=True)},
            "chi2": float(statistic), "p_value": float(p)}


def compare_means(treatment: np.ndarray, control: np.ndarray, alpha: float) -> Comparison:
    """Welch's t-test of the difference in means, with the relative effect's interval by the
    delta method."""
    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    _, p, _ = compare.ttest_ind(usevar="unequal")
    low, high = compare.tconfint_diff(alpha=alpha, usevar="unequal")
    mt, mc = treatment.mean(), control.mean()
    vt, vc = treatment.var(ddof=1) / len(treatment), control.var(ddof=1) / len(control)
    relative = mt / mc - 1 if mc else float("nan")
    rel_se = np.sqrt(vt / mc ** 2 + mt ** 2 * vc / mc ** 4) if mc else float("nan")
    z = stats.norm.ppf(1 - alpha / 2)
    return Comparison(float(mt - mc), (float(low), float(high)), float(relative),
                      (float(relative - z * rel_se), float(relative + z * rel_se)), float(p),
                      float(vt + vc))


def ratio_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """A ratio metric sum(num)/sum(den) over units and its variance by the delta method."""
    n, mx, my = len(num), num.mean(), den.mean()
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] / my ** 2 - 2 * mx * cov[0, 1] / my ** 3 + mx ** 2 * cov[1, 1] / my ** 4) / n
    return float(mx / my), float(var)


def compare_ratios(num_t: np.ndarray, den_t: np.ndarray, num_c: np.ndarray, den_c: np.ndarray,
                   alpha: float) -> Comparison:
    """A z-test of the difference of two ratio metrics, variances by the delta method."""
    rt, vt = ratio_variance(num_t, den_t)
    rc, vc = ratio_variance(num_c, den_c)
    effect, se = rt - rc, np.sqrt(vt + vc)
    z = stats.norm.ppf(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(effect) / se)
    rel_se = np.sqrt(vt / rc ** 2 + rt ** 2 * vc / rc ** 4)
    return Comparison(effect, (effect - z * se, effect + z * se), rt / rc - 1,
                      (rt / rc - 1 - z * rel_se, rt / rc - 1 + z * rel_se), float(p),
                      float(vt + vc))


def cuped(values: np.ndarray, covariate: np.ndarray) -> tuple[np.ndarray, float, float]:
    """CUPED: `values - theta * (covariate - mean)` with theta = cov / var over all units; returns
    the adjusted values, theta and the share of variance removed."""
    var_x = covariate.var(ddof=1)
    if var_x == 0:
        return values, 0.0, 0.0
    theta = np.cov(values, covariate, ddof=1)[0, 1] / var_x
    adjusted = values - theta * (covariate - covariate.mean())
    return adjusted, float(theta), float(1 - adjusted.var(ddof=1) / values.var(ddof=1))


def msprt(effect: float, variance: float, tau: float, alpha: float) -> tuple[float, float]:
    """The normal-mixture mSPRT at one look: the always-valid p-value's term 1/Lambda (capped
    at 1) and the half-width of the (1 - alpha) confidence sequence."""
    v, t2 = variance, tau ** 2
    log_lambda = 0.5 * np.log(v / (v + t2)) + t2 * effect ** 2 / (2 * v * (v + t2))
    half = np.sqrt(v * (v + t2) / t2 * (2 * np.log(1 / alpha) + np.log((v + t2) / v)))
    return float(min(1.0, np.exp(-log_lambda))), float(half)


def compare(units: pd.DataFrame, name: str, treatment: str, control: str, alpha: float,
            covariate: np.ndarray | None) -> tuple[Comparison, float | None]:
    """Compare one metric between two variants (CUPED-adjusted mean metrics when a covariate
    is given); also returns the variance reduction CUPED achieved."""
    num, den = metric(units, name)
    in_t = (units["variant"] == treatment).to_numpy()
    in_c = (units["variant"] == control).to_numpy()
    if den is not None:
        return compare_ratios(num[in_t], den[in_t], num[in_c], den[in_c], alpha), None
    reduction = None
    if covariate is not None:
        both = in_t | in_c
        adjusted, _, reduction = cuped(num[both], covariate[both])
        num = num.copy()
        num[both] = adjusted
    return compare_means(num[in_t], num[in_c], alpha), reduction


def sequential(exposures: pd.DataFrame, events: pd.DataFrame, name: str, treatment: str,
               control: str, settings: AnalysisSettings, by_user: bool
               ) -> list[dict[str, Any]]:
    """The metric looked at after every `look_every`: per look the effect, its fixed-horizon
    interval and p-value, the confidence sequence and the always-valid p-value so far."""
    ends = pd.date_range(exposures["timestamp"].min().floor(settings.look_every),
                         exposures["timestamp"].max(), freq=settings.look_every)[1:]
    ends = [*ends, None]  # the last look: every exposure and every event so far
    looks, always_valid = [], 1.0
    for end in ends:
        seen = exposures if end is None else exposures[exposures["timestamp"] < end]
        sofar = unit_table(seen, events if end is None else events[events["timestamp"] < end],
                           by_user)
        if (sofar["variant"] == treatment).sum() < 2 or (sofar["variant"] == control).sum() < 2:
            continue
        num, _ = metric(sofar, name)
        if np.ptp(num) == 0:  # every unit alike so far (no outcomes yet): nothing to test
            continue
        result, _ = compare(sofar, name, treatment, control, settings.alpha, None)
        sd = num[(sofar["variant"] == control).to_numpy()].std(ddof=1) or 1.0
        term, half = msprt(result.effect, result.variance, settings.tau * sd, settings.alpha)
        always_valid = min(always_valid, term)
        at = exposures["timestamp"].max() if end is None else end
        looks.append({"at": at.isoformat(), "units": len(sofar), "effect": result.effect,
                      "ci": list(result.ci), "p_value": result.p_value,
                      "sequence": [result.effect - half, result.effect + half],
                      "always_valid_p": always_valid})
    return looks


def guardrails(experiment: Experiment, exposures: pd.DataFrame, treatment: str,
               comparisons: dict[str, Comparison]) -> dict[str, Any]:
    """Latency, error rate and no-drop metrics of a treatment, each with its verdict."""
    rules = experiment.guardrails
    latency = exposures[exposures["status"] == 200].groupby("variant")["latency_ms"]
    p99 = latency.quantile(0.99)
    ratio = float(p99.get(treatment, np.nan) / p99.get(experiment.control.name, np.nan))
    errors = (exposures["status"] != 200).groupby(exposures["variant"]).mean()
    error_rate = float(errors.get(treatment, 0.0))
    out = {"p99_latency_ratio": {"value": ratio, "limit": rules.max_p99_latency_ratio,
                                 "ok": bool(ratio <= rules.max_p99_latency_ratio)},
           "error_rate": {"value": error_rate, "limit": rules.max_error_rate,
                          "ok": bool(error_rate <= rules.max_error_rate)}}
    for name in rules.no_drop:  # non-inferiority: shown when the whole interval is above
        low, high = comparisons[name].relative_ci
        out[f"no_drop:{name}"] = {"value": low, "limit": -rules.drop_margin,
                                  "ok": bool(low >= -rules.drop_margin),
                                  # a drop beyond the margin for sure, not a wide interval
                                  "breached": bool(high < -rules.drop_margin)}
    return out


def analyze(experiment: Experiment, exposures: pd.DataFrame, events: pd.DataFrame,
            covariate: pd.Series | None, settings: AnalysisSettings, now: datetime
            ) -> dict[str, Any]:
    """The experiment's summary: SRM, per metric and treatment the effects (fixed horizon,
    corrected, sequential), guardrails, and the decision with its reasons.

    `exposures`: request_id, timestamp, variant, unit, latency_ms, status (the prediction log's
    rows of this experiment); `events`: request_id, type, value, timestamp; `covariate`: the
    pre-experiment value per unit (CUPED), or None."""
    by_user = experiment.unit == "user_id"
    units = unit_table(exposures, events, by_user)
    weights = {v.name: v.weight for v in experiment.variants}
    ratio = srm(units["variant"].value_counts().to_dict(), weights)
    ratio["flagged"] = bool(ratio["p_value"] < settings.srm_p)
    x = None
    if covariate is not None and settings.cuped:
        x = covariate.reindex(units.index).astype(float)
        x = x.fillna(x.mean() if x.notna().any() else 0.0).to_numpy()
    control = experiment.control.name
    metrics = [experiment.primary_metric, *experiment.secondary_metrics]
    for name in experiment.guardrails.no_drop:
        if name not in metrics:
            metrics.append(name)
    results: dict[str, dict[str, Any]] = {}
    comparisons: dict[str, dict[str, Comparison]] = {}
    tested: list[tuple[str, str]] = []
    for variant in experiment.variants[1:]:
        comparisons[variant.name] = {}
        for name in metrics:
            result, reduction = compare(units, name, variant.name, control, settings.alpha, x)
            comparisons[variant.name][name] = result
            results.setdefault(variant.name, {})[name] = {**result.as_dict(),
                                                          "cuped_variance_reduction": reduction}
            if name in (experiment.primary_metric, *experiment.secondary_metrics):
                tested.append((variant.name, name))
    reject, adjusted, _, _ = multipletests([comparisons[v][m].p_value for v, m in tested],
                                           alpha=settings.alpha, method=settings.correction)
    for (variant, name), p, significant in zip(tested, adjusted, reject, strict=True):
        results[variant][name].update(p_adjusted=float(p), significant=bool(significant))
    summary: dict[str, Any] = {
        "experiment": experiment.name, "route": experiment.route, "as_of": now.isoformat(),
        "units": int(len(units)), "exposures": int(len(exposures)),
        "units_with_several_variants": int((units["variants_seen"] > 1).sum()),
        "srm": ratio, "metrics_order": metrics, "metrics": results, "sequential": {},
        "guardrails": {},
        "levels": {name: {v: level(units[units["variant"] == v], name) for v in weights}
                   for name in metrics},
    }
    for variant in experiment.variants[1:]:
        summary["sequential"][variant.name] = sequential(
            exposures, events, experiment.primary_metric, variant.name, control, settings,
            by_user)
        summary["guardrails"][variant.name] = guardrails(experiment, exposures, variant.name,
                                                         comparisons[variant.name])
    summary["decision"], summary["winner"], summary["reasons"] = decide(
        experiment, summary, settings, now)
    return summary


def decide(experiment: Experiment, summary: dict[str, Any], settings: AnalysisSettings,
           now: datetime) -> tuple[str, str | None, list[str]]:
    """ship / keep control / keep running / invalid, the winning variant and the reasons.

    Before the end a variant ships only on the sequential test (always-valid p < alpha); at the
    end, on the fixed-horizon test corrected for the metrics and variants tested."""
    primary = experiment.primary_metric
    if summary["srm"]["flagged"]:
        return "invalid", None, [
            f"sample ratio mismatch: units per variant {summary['srm']['counts']} vs expected "
            f"{ {k: round(v) for k, v in summary['srm']['expected'].items()} } "
            f"(p = {summary['srm']['p_value']:.2g} < {settings.srm_p}); fix assignment or "
            "logging before reading any effect"]
    ended = now >= experiment.end
    reasons, winners = [], []
    for variant in experiment.variants[1:]:
        result = summary["metrics"][variant.name][primary]
        looks = summary["sequential"][variant.name]
        always_valid = looks[-1]["always_valid_p"] if looks else 1.0
        checks = summary["guardrails"][variant.name]
        failed = [k for k, g in checks.items() if not g["ok"] and g.get("breached", True)]
        unproven = [k for k, g in checks.items() if not g["ok"] and not g.get("breached", True)]
        significant = result["significant"] if ended else always_valid < settings.alpha
        how = (f"p = {result['p_adjusted']:.3g} ({settings.correction})" if ended
               else f"always-valid p = {always_valid:.3g}")
        line = (f"{variant.name} vs {experiment.control.name} on {primary}: "
                f"{result['relative']:+.1%} ({how})")
        if significant and result["effect"] > 0 and not failed and not unproven:
            winners.append((result["effect"], variant.name))
            reasons.append(line + ": better")
        elif failed:
            reasons.append(line + f"; guardrails failed: {', '.join(failed)}")
        elif unproven and significant and result["effect"] > 0:
            reasons.append(line + f": better, but not yet shown not to drop "
                                  f"{', '.join(unproven)}")
        elif significant:
            reasons.append(line + ": worse")
        else:
            reasons.append(line + ": no significant difference" + ("" if ended else " yet"))
    if winners:
        return "ship", max(winners)[1], reasons
    if ended or any(r.endswith(": worse") or "guardrails failed" in r for r in reasons):
        return "keep control", None, reasons
    return "keep running", None, reasons

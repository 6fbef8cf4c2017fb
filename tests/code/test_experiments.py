"""Experiments without the app: declarations, sticky assignment, and every statistic checked
against an independent computation (scipy, a formula by hand, simulation or integration)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import integrate, stats

from slipway.experiments.analysis import (
    AnalysisSettings,
    compare_means,
    cuped,
    msprt,
    ratio_variance,
    srm,
)
from slipway.experiments.assignment import assign, bucket
from slipway.experiments.config import Experiment

NOW = datetime(2026, 3, 10, tzinfo=timezone.utc)


def experiment(**changes) -> Experiment:
    spec = {"name": "ranker-ab", "route": "/v1/rank", "unit": "user_id",
            "variants": [{"name": "control", "model": "engagement@champion", "weight": 0.5},
                         {"name": "tuned", "model": "engagement@7", "weight": 0.5}],
            "start": "2026-03-01T00:00:00Z", "end": "2026-03-31T00:00:00Z"}
    return Experiment.model_validate({**spec, **changes})


def test_assignment_is_sticky_keeps_treated_units_when_ramped_and_follows_the_weights():
    ramp = {"variants": [{"name": "control", "model": "engagement@champion", "weight": 0.9},
                         {"name": "tuned", "model": "engagement@7", "weight": 0.1}]}
    small, large = experiment(**ramp), experiment()
    units = [str(u) for u in range(20_000)]
    first = [assign(small, u, {}, NOW).name for u in units]
    assert first == [assign(small, u, {}, NOW).name for u in units]  # same unit, same variant
    ramped = [assign(large, u, {}, NOW).name for u in units]
    # Ramping 10% -> 50% moves control units in; no treated unit leaves.
    assert all(r == "tuned" for f, r in zip(first, ramped, strict=True) if f == "tuned")
    for shares, weight in ((first, 0.1), (ramped, 0.5)):  # shares match the weights
        treated = sum(s == "tuned" for s in shares)
        assert stats.binomtest(treated, len(shares), weight).pvalue > 0.001


def test_two_experiments_assign_independently_and_targeting_and_kill_switch_send_to_control():
    units = [str(u) for u in range(20_000)]
    a = np.array([bucket("exp-a", u) < 0.5 for u in units])
    b = np.array([bucket("exp-b", u) < 0.5 for u in units])
    table = pd.crosstab(a, b).to_numpy()
    assert stats.chi2_contingency(table).pvalue > 0.001  # no correlation between salts
    targeted = experiment(targeting={"countries": ["DE"]})
    assert assign(targeted, "1", {"country": "US"}, NOW) is None
    assert assign(targeted, "1", {"country": "DE"}, NOW) is not None
    assert assign(experiment(killed=True), "1", {}, NOW) is None
    assert assign(experiment(), "1", {}, datetime(2026, 4, 2, tzinfo=timezone.utc)) is None


@pytest.mark.parametrize("change, field, words", [
    ({"variants": [{"name": "a", "model": "engagement@champion", "weight": 0.7},
                   {"name": "b", "model": "engagement@2", "weight": 0.2}]},
     "variants", "sum to 1"),
    ({"variants": [{"name": "a", "model": "engagement", "weight": 0.5},
                   {"name": "b", "model": "engagement@2", "weight": 0.5}]},
     "variants.0.model", "not NAME@REF"),
    ({"primary_metric": "revenue"}, "primary_metric", "unknown metric"),
    ({"unit": "session"}, "unit", "cannot randomise /v1/rank"),
    ({"route": "/v1/retrieve"}, "route", "'/v1/rank', '/v1/classify' or '/v1/rag'"),
    ({"end": "2026-02-01T00:00:00Z"}, "end", "after start"),
])
def test_a_bad_declaration_names_the_field_and_the_fix(change, field, words):
    with pytest.raises(ValidationError) as info:
        experiment(**change)
    error = info.value.errors()[0]
    assert words in error["msg"]
    # A field's own check names it in `loc`; a check across fields starts its message with it.
    assert field in (".".join(map(str, error["loc"])) or error["msg"])


def test_srm_and_welch_equal_their_textbook_formulas():
    result = srm({"control": 5200, "tuned": 4800}, {"control": 0.5, "tuned": 0.5})
    by_hand = (200 ** 2 / 5000) * 2
    assert result["chi2"] == pytest.approx(by_hand)
    assert result["p_value"] == pytest.approx(stats.chi2.sf(by_hand, 1))
    assert result["p_value"] < 1e-3
    rng = np.random.default_rng(0)
    t, c = rng.poisson(1.2, 900).astype(float), rng.poisson(1.0, 1100).astype(float)
    got = compare_means(t, c, 0.05)
    assert got.p_value == pytest.approx(stats.ttest_ind(t, c, equal_var=False).pvalue)
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    dof = (vt + vc) ** 2 / (vt ** 2 / (len(t) - 1) + vc ** 2 / (len(c) - 1))
    half = stats.t.ppf(0.975, dof) * np.sqrt(vt + vc)
    assert got.ci == pytest.approx((t.mean() - c.mean() - half, t.mean() - c.mean() + half))


def test_delta_method_variance_of_ctr_matches_the_spread_over_replications():
    rng = np.random.default_rng(1)

    def replicate() -> tuple[np.ndarray, np.ndarray]:
        impressions = rng.poisson(8, 2000) + 1
        rate = rng.beta(2, 18, 2000)  # users differ: clicks cluster by user
        return rng.binomial(impressions, rate).astype(float), impressions.astype(float)

    ratios = [ratio_variance(*replicate())[0] for _ in range(600)]
    _, delta = ratio_variance(*replicate())
    assert delta == pytest.approx(np.var(ratios, ddof=1), rel=0.15)


def test_cuped_theta_is_the_regression_slope_and_removes_the_explained_variance():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 5000)
    y = 2.0 + 0.8 * x + rng.normal(0, 0.6, 5000)
    adjusted, theta, reduction = cuped(y, x)
    assert theta == pytest.approx(np.polyfit(x, y, 1)[0])
    assert reduction == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert adjusted.mean() == pytest.approx(y.mean())


def test_msprt_equals_the_mixture_likelihood_ratio_integrated_numerically():
    effect, variance, tau = 0.12, 0.003, 0.1

    def ratio(theta: float) -> float:  # N(effect; theta, V) / N(effect; 0, V), theta ~ N(0, tau^2)
        return (stats.norm.pdf(effect, theta, np.sqrt(variance))
                / stats.norm.pdf(effect, 0, np.sqrt(variance)) * stats.norm.pdf(theta, 0, tau))

    mixture, _ = integrate.quad(ratio, -2, 2, points=[0, effect])
    term, half = msprt(effect, variance, tau, 0.05)
    assert term == pytest.approx(min(1, 1 / mixture), rel=1e-6)
    # The confidence sequence is where the mixture ratio stays below 1/alpha.
    edge = effect - half
    inside, _ = integrate.quad(
        lambda th: stats.norm.pdf(effect, th + edge, np.sqrt(variance))
        / stats.norm.pdf(effect, edge, np.sqrt(variance)) * stats.norm.pdf(th, 0, tau), -2, 2,
        points=[0, effect - edge])
    assert inside == pytest.approx(1 / 0.05, rel=1e-4)


def test_the_analysis_ships_a_planted_lift_not_an_aa_and_refuses_a_skewed_split():
    """Simulated experiments shaped as the app logs them (benchmarks/ab.py): an A/A test ships
    nothing, a 30% lift ships the treatment (fixed horizon and sequential agree), and a 52/48
    split from lost treatment exposures (12,000 users) is invalid whatever the effect."""
    from benchmarks.ab import run, simulate
    from slipway.experiments.analysis import unit_table
    from slipway.experiments.report import plots, render

    settings = AnalysisSettings()
    for seed in range(3):
        aa = run(seed, settings)
        assert aa["decision"] == "keep control" and not aa["srm"]["flagged"]
        assert not aa["metrics"]["treatment"]["clicks"]["significant"]
    lifted = run(100, settings, lift=0.3)
    clicks = lifted["metrics"]["treatment"]["clicks"]
    assert lifted["decision"] == "ship" and lifted["winner"] == "treatment"
    assert clicks["relative_ci"][0] > 0 and clicks["relative"] == pytest.approx(0.3, abs=0.1)
    assert lifted["sequential"]["treatment"][-1]["always_valid_p"] < settings.alpha
    assert clicks["cuped_variance_reduction"] > 0.1  # the pre-period CTR explains clicks
    exp, exposures, events, _ = simulate(100, lift=0.3)
    page = render(lifted, plots(lifted, unit_table(exposures, events, True), exposures, "1D"))
    assert "<h1>sim-100: ship</h1>" in page and page.count("data:image/png;base64,") == 3
    skewed = run(200, settings, lift=0.3, lose_treatment=0.077, size=12_000)
    assert skewed["srm"]["flagged"] and skewed["decision"] == "invalid"
    assert skewed["winner"] is None and "sample ratio mismatch" in skewed["reasons"][0]


def test_publishing_checks_variant_versions_and_one_live_experiment_per_route(tmp_path):
    from slipway.errors import SlipwayError
    from slipway.experiments.store import publish, published
    from slipway.registry import Registry
    from slipway.storage import Storage

    storage = Storage(str(tmp_path / "root"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"0")
    for _ in range(2):
        Registry(storage).register_folder("engagement", str(tmp_path / "model"), "test")
    Registry(storage).set_alias("engagement", "champion", 1)
    live = {"start": "2026-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"}
    with pytest.raises(SlipwayError, match="variants: tuned: engagement has no version 7"):
        publish(storage, experiment(**live))
    two = {"variants": [{"name": "control", "model": "engagement@champion", "weight": 0.5},
                        {"name": "tuned", "model": "engagement@2", "weight": 0.5}], **live}
    publish(storage, experiment(**two))
    with pytest.raises(SlipwayError, match="'ranker-ab' already randomises /v1/rank"):
        publish(storage, experiment(**{**two, "name": "another"}))
    publish(storage, experiment(**{**two, "killed": True}))  # the kill switch frees the route
    publish(storage, experiment(**{**two, "name": "another"}))
    publish(storage, experiment(**{**two, "killed": True}))  # a kill is never refused
    assert [(e.name, e.killed) for e in published(storage)] == [("another", False),
                                                                 ("ranker-ab", True)]


def test_events_join_exposures_by_request_id_or_by_user_after_the_first_exposure():
    from slipway.experiments.analysis import unit_table

    at = pd.Timestamp("2026-03-02", tz="UTC")
    exposures = pd.DataFrame({"request_id": ["a", "b", "c"], "unit": ["1", "1", "2"],
                              "variant": ["control", "control", "tuned"],
                              "timestamp": [at, at + pd.Timedelta("1h"), at]})
    events = pd.DataFrame({
        "request_id": ["a", "b", None, None, None, "zzz"],
        "user_id": [1, 1, 2, 2, 3, 1],
        "type": ["click", "click", "click", "click", "click", "click"],
        "value": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        # user 2's first keyless click comes before its exposure: not the experiment's doing
        "timestamp": [at, at, at - pd.Timedelta("1h"), at + pd.Timedelta("1m"), at, at]})
    units = unit_table(exposures, events, by_user=True)
    assert units["click"].to_dict() == {"1": 2.0, "2": 1.0}  # user 3 unexposed, "zzz" unknown
    assert units["exposures"].to_dict() == {"1": 2, "2": 1}
    assert unit_table(exposures, events)["click"].to_dict() == {"1": 2.0, "2": 0.0}


@pytest.mark.parametrize("low, high, before_end, after_end", [
    (-0.02, 0.10, "ship", "ship"),                   # shown not to drop: ships
    (-0.30, 0.10, "keep running", "keep control"),   # not yet shown either way
    (-0.40, -0.20, "keep control", "keep control"),  # dropped beyond the margin for sure
])
def test_a_no_drop_guardrail_blocks_shipping_until_shown_and_stops_only_a_sure_drop(
        low, high, before_end, after_end):
    from slipway.experiments.analysis import decide, guardrails

    exp = experiment(guardrails={"no_drop": ["dwell_seconds"], "drop_margin": 0.05})
    dwell = type("C", (), {"relative_ci": (low, high)})()
    exposures = pd.DataFrame({"variant": ["control", "tuned"] * 50, "status": 200,
                              "latency_ms": 10.0})
    summary = {"srm": {"flagged": False},
               "metrics": {"tuned": {"clicks": {"significant": True, "effect": 0.2,
                                                "relative": 0.1, "p_adjusted": 0.001}}},
               "sequential": {"tuned": [{"always_valid_p": 0.001}]},
               "guardrails": {"tuned": guardrails(exp, exposures, "tuned",
                                                  {"dwell_seconds": dwell})}}
    settings = AnalysisSettings()
    assert decide(exp, summary, settings, NOW)[0] == before_end
    assert decide(exp, summary, settings, datetime(2026, 4, 1, tzinfo=timezone.utc))[0] == \
        after_end

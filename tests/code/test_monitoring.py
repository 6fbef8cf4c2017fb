"""Drift detectors on samples of the generated world (false alarms near alpha without drift,
drift found with it), alert deduplication, label joins and monitor config errors."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from jobs.monitor import MonitorConfig
from slipway.config import ConfigError, load_config
from slipway.data.generate import DriftSpec, GeneratorConfig, generate
from slipway.monitoring.alerts import plan
from slipway.monitoring.checks import DriftSettings, univariate
from slipway.monitoring.detectors import compare, correct, domain_classifier
from slipway.monitoring.frames import LabelSettings, join_labels
from slipway.storage import Storage


def clicked_events(drift: DriftSpec | None = None) -> pd.DataFrame:
    """Clicked impressions with the user's device: a numeric and a categorical column."""
    world = generate(GeneratorConfig(seed=3, num_users=800, num_articles=300,
                                     num_events=30_000, drift=drift))
    events = world.events.merge(world.users[["user_id", "device"]], on="user_id")
    late = events["event_timestamp"] >= pd.Timestamp(date(2026, 1, 16), tz="UTC")
    return events[events["clicked"] & late][["dwell_seconds", "device"]]


def test_false_alarm_rate_stays_near_alpha_and_injected_drift_is_found():
    pool = clicked_events()
    settings = DriftSettings(alpha=0.05, large_sample=10_000)  # KS and chi-squared, BH
    rng = np.random.default_rng(0)
    trials, alarms = 200, 0
    for _ in range(trials):
        ref = pool.iloc[rng.choice(len(pool), 300, replace=False)]
        cur = pool.iloc[rng.choice(len(pool), 300, replace=False)]
        alarms += any(r.drifted for r in univariate(ref, cur, list(pool.columns),
                                                    settings).values())
    # Family-wise alarms over two tests with BH stay at or below alpha, give or take the noise
    # of 200 trials (sd 1.5 points).
    assert alarms / trials <= 0.05 + 0.035
    drifted = clicked_events(DriftSpec(start=date(2026, 1, 16), dwell_scale=1.5,
                                       device_weights={"mobile": 1, "desktop": 1,
                                                       "tablet": 3}))
    found = univariate(pool.sample(300, random_state=1), drifted.sample(300, random_state=2),
                       list(pool.columns), settings)
    assert found["dwell_seconds"].drifted and found["device"].drifted


@pytest.mark.parametrize("method,column", [("chi2", "device"), ("ks", "dwell_seconds")])
def test_each_significance_test_holds_alpha_at_every_sample_size(method, column):
    """Reference and current drawn from one pool (exchangeable): each test alarms in about 5%
    of 400 trials at 100, 1,000 and 10,000 rows; alpha must lie in the rate's exact 99%
    interval. (KS on dwell seconds, which have ties, may be conservative: below is fine.)"""
    from scipy import stats

    world = generate(GeneratorConfig(seed=5, num_users=2000, num_articles=200,
                                     num_events=60_000))
    events = world.events.merge(world.users[["user_id", "device"]], on="user_id")
    pool = events.loc[events["clicked"] | (column == "device"), column].to_numpy()
    rng = np.random.default_rng(1)
    for n in (100, 1000, 10_000):
        trials, alarms = 400, 0
        for _ in range(trials):
            ref, cur = (pd.Series(pool[rng.integers(len(pool), size=n)], name=column)
                        for _ in range(2))
            alarms += correct({column: compare(ref, cur, method)}, 0.05, "none")[column].drifted
        ci = stats.binomtest(alarms, trials).proportion_ci(0.99, method="exact")
        assert ci.low <= 0.05, (n, alarms / trials)
        assert method == "ks" or 0.05 <= ci.high, (n, alarms / trials)


def test_detectors_pick_by_type_and_reject_a_wrong_method():
    frame = pd.DataFrame({"x": np.arange(50.0), "c": ["a", "b"] * 25})
    assert compare(frame["x"], frame["x"], "ks").p_value == 1.0
    assert compare(frame["c"], frame["c"], "jensenshannon").statistic == 0.0
    with pytest.raises(ValueError, match="does not apply to categorical column 'c'"):
        compare(frame["c"], frame["c"], "ks")
    rng = np.random.default_rng(0)
    same = domain_classifier(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)))
    moved = domain_classifier(rng.normal(size=(300, 8)), rng.normal(0.5, 1, size=(300, 8)))
    assert same.statistic < 0.6 < moved.statistic and moved.p_value < 1e-6


def test_psi_and_wasserstein_equal_their_formulas_worked_by_hand():
    # Device shares 50/30/20 in the reference, 20/30/50 now: PSI = sum((q - p) ln(q / p)).
    ref = pd.Series(["m"] * 50 + ["d"] * 30 + ["t"] * 20, name="device")
    cur = pd.Series(["m"] * 20 + ["d"] * 30 + ["t"] * 50, name="device")
    psi = compare(ref, cur, "psi")
    assert psi.statistic == pytest.approx(0.3 * math.log(2.5) * 2)  # 0.5498
    assert correct({"device": psi}, 0.05, "bh")["device"].drifted  # over the 0.2 default
    assert compare(ref, ref, "psi").statistic == 0.0
    # Half zeros and half ones (sd 0.5), then every value moved up by 0.25: the earth mover
    # moves all mass 0.25, which is half a reference standard deviation.
    values = pd.Series([0.0, 1.0] * 50, name="x")
    moved = compare(values, values + 0.25, "wasserstein")
    assert moved.statistic == pytest.approx(0.5)
    assert correct({"x": moved}, 0.05, "bh")["x"].score == pytest.approx(5.0)  # 0.5 / 0.1
    small = compare(values, values + 0.025, "wasserstein", threshold=0.1)
    assert small.statistic == pytest.approx(0.05) and not correct({"x": small}, 0.05,
                                                                   "bh")["x"].drifted


def test_alerts_fire_once_repeat_after_the_interval_and_resolve():
    now = datetime(2026, 2, 1, tzinfo=timezone.utc)
    send, resolved, state = plan({"feature:a": "a drifted"}, {}, now, timedelta(hours=24))
    assert send == {"feature:a": "a drifted"} and resolved == []
    send, _, state = plan({"feature:a": "a drifted"}, state, now + timedelta(hours=1),
                          timedelta(hours=24))
    assert send == {}
    send, _, state = plan({"feature:a": "a drifted"}, state, now + timedelta(hours=25),
                          timedelta(hours=24))
    assert list(send) == ["feature:a"] and state["feature:a"]["since"] == now.isoformat()
    send, resolved, state = plan({}, state, now + timedelta(hours=26), timedelta(hours=24))
    assert send == {} and resolved == ["feature:a"] and state == {}


def test_labels_join_within_the_horizon_only(tmp_path):
    storage = Storage(str(tmp_path))
    t0 = pd.Timestamp("2026-02-01 10:00", tz="UTC")
    storage.makedirs("labels")
    pd.DataFrame({"user_id": [1, 1, 2], "article_id": [5, 6, 5], "clicked": [True, False, True],
                  "event_timestamp": [t0 + pd.Timedelta("10min"), t0 + pd.Timedelta("3h"),
                                      t0 - pd.Timedelta("1min")]}).to_parquet(
        storage.uri("labels", "part.parquet"))
    rows = pd.DataFrame({"user_id": [1, 1, 2], "article_id": [5, 6, 5],
                         "timestamp": [t0, t0, t0], "prediction": [0.9, 0.2, 0.5]})
    joined = join_labels(rows, storage, LabelSettings(path="labels"))
    # Within an hour after serving: joined; three hours later or before serving: not yet.
    assert joined["label"].tolist()[0] == 1 and joined["label"].isna().tolist()[1:] == [True, True]


def test_monitor_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="reference.end is required"):
        load_config(MonitorConfig, None, ["reference.kind=window"])
    with pytest.raises(ConfigError, match="windows.size 'daily' is not a pandas frequency"):
        load_config(MonitorConfig, None, ["windows.size=daily"])
    with pytest.raises(ConfigError, match="drift.correction"):
        load_config(MonitorConfig, None, ["drift.correction=holm"])

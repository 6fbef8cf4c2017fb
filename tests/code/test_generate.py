"""The demo data generator: seeded, learnable, and drift that lands where it is asked to."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from slipway.data.generate import DriftSpec, GeneratorConfig, generate, public


def small(**kw) -> GeneratorConfig:
    return GeneratorConfig(num_users=300, num_articles=200, num_events=30_000, days=20, **kw)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate(small(seed=1)), generate(small(seed=1)), generate(small(seed=2))
    assert a.events.equals(b.events) and a.articles.equals(b.articles)
    assert not a.events.equals(c.events)


def test_tables_have_the_documented_columns():
    world = generate(small())
    assert list(public(world.articles).columns) == ["article_id", "title", "body", "topic",
                                                    "published_at"]
    assert list(public(world.users).columns) == ["user_id", "signup_date", "country", "device"]
    assert list(public(world.events).columns) == ["event_id", "user_id", "article_id",
                                                  "event_timestamp", "clicked", "dwell_seconds"]
    ev = world.events
    # The hidden truth: clicks drawn from the click probability (about as many as it predicts).
    expected = ev["_click_probability"].sum()
    assert abs(ev["clicked"].sum() - expected) < 4 * expected ** 0.5
    assert ev["event_timestamp"].is_monotonic_increasing
    assert (ev.loc[~ev["clicked"], "dwell_seconds"] == 0).all()
    assert (ev.loc[ev["clicked"], "dwell_seconds"] > 0).all()
    published = world.articles.set_index("article_id")["published_at"]
    assert (published[ev["article_id"]].to_numpy() <= ev["event_timestamp"].to_numpy()).all()


def test_clicks_depend_on_user_and_article_features():
    world = generate(small())
    ev = world.events.merge(world.users, on="user_id")
    by_device = ev.groupby("device")["clicked"].mean()
    assert by_device["mobile"] > by_device["tablet"] + 0.03
    topic_idx = ev.merge(world.articles, on="article_id")["topic"].map(
        {t: i for i, t in enumerate(["technology", "sports", "politics", "science", "business",
                                     "entertainment"])})
    fav = (topic_idx == ev["_fav0"]) | (topic_idx == ev["_fav1"])
    assert ev["clicked"][fav].mean() > ev["clicked"][~fav].mean() + 0.15


def test_drift_starts_at_the_given_date():
    start = date(2026, 1, 11)
    world = generate(small(drift=DriftSpec(start=start, dwell_scale=3.0,
                                           device_weights={"tablet": 1.0})))
    ev = world.events.merge(world.users, on="user_id")
    late = ev["event_timestamp"] >= pd.Timestamp("2026-01-11", tz="UTC")
    clicked = ev["clicked"]
    assert ev.loc[late & clicked, "dwell_seconds"].median() > 2 * ev.loc[
        ~late & clicked, "dwell_seconds"].median()
    assert (ev.loc[late, "device"] == "tablet").all()
    assert (ev.loc[~late, "device"] == "tablet").mean() < 0.3


def test_concept_drift_changes_the_click_relation_only():
    start = date(2026, 1, 11)
    base = generate(small(seed=3))
    drifted = generate(small(seed=3, drift=DriftSpec(start=start, favorite_topic_effect=-1.4)))
    late = base.events["event_timestamp"] >= pd.Timestamp("2026-01-11", tz="UTC")
    assert base.events["user_id"].equals(drifted.events["user_id"])
    assert base.events.loc[~late, "clicked"].equals(drifted.events.loc[~late, "clicked"])
    assert drifted.events.loc[late, "clicked"].mean() < base.events.loc[late, "clicked"].mean()


def test_unknown_drift_names_are_rejected():
    with pytest.raises(ValueError, match="unknown names"):
        generate(small(drift=DriftSpec(start=date(2026, 1, 5), topic_weights={"cooking": 1})))

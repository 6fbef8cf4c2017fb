"""A seeded generator for the demo domain, a content platform.

Tables: articles (id, title, body, topic, published_at), users (id, signup date, country, device)
and impression events (user, article, time, clicked, dwell seconds). Whether a user clicks depends
on user and article features (topic affinity, device, article quality and age, user propensity),
so a model can learn it from the feature store. Drift can be injected from a given date: the topic
mix, a feature's distribution (device mix of traffic, dwell time) or the click relation itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
from pydantic import Field

from slipway.config import StrictModel

TOPICS = ("technology", "sports", "politics", "science", "business", "entertainment")
COUNTRIES = ("US", "GB", "DE", "IN", "BR", "JP")
DEVICES = ("mobile", "desktop", "tablet")

_VOCAB = {
    "technology": "software chip startup cloud robot algorithm smartphone network data "
                  "processor app developer battery browser security update device code laptop "
                  "server encryption platform",
    "sports": "match team coach season goal league player championship score stadium final "
              "tournament striker referee victory defeat injury transfer fans medal",
    "politics": "election minister parliament vote policy senate campaign government reform "
                "president law coalition debate party budget diplomat treaty protest mayor",
    "science": "researchers study telescope species climate experiment genome particle "
               "laboratory vaccine fossil planet ocean molecule theory cells physics orbit",
    "business": "market shares profit investors company merger revenue bank economy inflation "
                "trade earnings startup retail growth prices stocks deal quarter",
    "entertainment": "film actor album concert festival series director premiere music star "
                     "award show studio singer novel comedy drama audience band",
}
_COMMON = ("new report says week people after city first year could more plans big report "
           "today local major early latest").split()
_TITLE_FORMS = ("{a} {b} as {c} {d}", "How the {a} changed the {b}", "{a} and {b}: what {c} means",
                "Why {a} {b} matters for {c}", "The {a} behind the {b} {c}")
_SENTENCE_FORMS = ("The {a} said the {b} would {c} the {d}.", "A {a} {b} was reported on {c}.",
                   "Experts expect the {a} to affect {b} and {c}.",
                   "{a} {b} drew attention from {c} {d}.", "Officials linked the {a} to {b} {c}.")
_VERBS = ("change", "shape", "boost", "slow", "reshape", "support", "challenge")


class DriftSpec(StrictModel):
    """Drift injected from `start` on; each field left unset changes nothing."""

    start: date
    topic_weights: dict[str, float] | None = None
    device_weights: dict[str, float] | None = None
    dwell_scale: float = Field(default=1.0, gt=0)
    favorite_topic_effect: float | None = None
    device_effects: dict[str, float] | None = None


class GeneratorConfig(StrictModel):
    """Sizes and seed of the generated world."""

    seed: int = 0
    num_users: int = Field(default=500, ge=1)
    num_articles: int = Field(default=300, ge=1)
    num_events: int = Field(default=20_000, ge=1)
    start: date = date(2026, 1, 1)
    days: int = Field(default=30, ge=1)
    topic_weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(TOPICS, 1.0))
    device_weights: dict[str, float] = Field(
        default_factory=lambda: {"mobile": 0.6, "desktop": 0.3, "tablet": 0.1})
    favorite_topic_effect: float = 1.4
    device_effects: dict[str, float] = Field(
        default_factory=lambda: {"mobile": 0.25, "desktop": 0.0, "tablet": -0.3})
    drift: DriftSpec | None = None


@dataclass
class World:
    """The generated tables, plus hidden truths the tests and benchmarks may use."""

    articles: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame


def _weights(names: tuple[str, ...], given: dict[str, float], field: str) -> np.ndarray:
    unknown = set(given) - set(names)
    if unknown:
        raise ValueError(f"{field}: unknown names {sorted(unknown)}; allowed: {list(names)}")
    w = np.array([given.get(n, 0.0) for n in names], dtype=float)
    if w.sum() <= 0:
        raise ValueError(f"{field}: weights must have a positive sum")
    return w / w.sum()


def _text(rng: np.random.Generator, topic: str, forms: tuple[str, ...], n: int) -> list[str]:
    words = _VOCAB[topic].split()
    out = []
    for form in rng.choice(forms, size=n):
        picks = [w if rng.random() < 0.75 else rng.choice(_COMMON) for w in rng.choice(words, 4)]
        if "{c}" in form and form.startswith("The {a} said"):
            picks[2] = rng.choice(_VERBS)
        out.append(form.format(a=picks[0], b=picks[1], c=picks[2], d=picks[3]))
    return out


def _articles(cfg: GeneratorConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.num_articles
    start = datetime.combine(cfg.start, datetime.min.time(), tzinfo=timezone.utc)
    offsets = rng.uniform(-30 * 86400, cfg.days * 86400, size=n)
    published = pd.to_datetime(start) + pd.to_timedelta(np.sort(offsets), unit="s").floor("ms")
    topic_idx = rng.choice(len(TOPICS), size=n,
                           p=_weights(TOPICS, cfg.topic_weights, "topic_weights"))
    if cfg.drift and cfg.drift.topic_weights:
        late = published >= pd.Timestamp(cfg.drift.start, tz="UTC")
        late_weights = _weights(TOPICS, cfg.drift.topic_weights, "drift.topic_weights")
        topic_idx[late] = rng.choice(len(TOPICS), size=int(late.sum()), p=late_weights)
    titles, bodies = [], []
    for t in topic_idx:
        topic = TOPICS[t]
        title = _text(rng, topic, _TITLE_FORMS, 1)[0]
        titles.append(title[0].upper() + title[1:])
        sentences = _text(rng, topic, _SENTENCE_FORMS, int(rng.integers(3, 9)))
        bodies.append(" ".join(s[0].upper() + s[1:] for s in sentences))
    return pd.DataFrame({
        "article_id": np.arange(1, n + 1, dtype=np.int64),
        "title": titles,
        "body": bodies,
        "topic": [TOPICS[t] for t in topic_idx],
        "published_at": published,
        "_quality": rng.normal(0, 0.5, size=n),
    })


def _users(cfg: GeneratorConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.num_users
    favorites = np.stack([rng.permutation(len(TOPICS))[:2] for _ in range(n)])
    signup = pd.Timestamp(cfg.start) - pd.to_timedelta(rng.integers(0, 730, size=n), unit="D")
    return pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "signup_date": signup.date,
        "country": rng.choice(COUNTRIES, size=n, p=[0.35, 0.15, 0.15, 0.15, 0.1, 0.1]),
        "device": rng.choice(DEVICES, size=n,
                             p=_weights(DEVICES, cfg.device_weights, "device_weights")),
        "_propensity": rng.normal(0, 0.5, size=n),
        "_activity": rng.pareto(1.5, size=n) + 1.0,
        "_fav0": favorites[:, 0],
        "_fav1": favorites[:, 1],
    })


def _events(cfg: GeneratorConfig, rng: np.random.Generator, articles: pd.DataFrame,
            users: pd.DataFrame) -> pd.DataFrame:
    n = cfg.num_events
    start = pd.Timestamp(cfg.start, tz="UTC")
    secs = np.sort(rng.uniform(0, cfg.days * 86400, size=n))
    ts = (start + pd.to_timedelta(secs, unit="s")).floor("ms")
    drift = cfg.drift
    late = (ts >= pd.Timestamp(drift.start, tz="UTC")) if drift else np.zeros(n, dtype=bool)

    device_idx = users["device"].map({d: i for i, d in enumerate(DEVICES)}).to_numpy()
    activity = users["_activity"].to_numpy()
    user_idx = rng.choice(len(users), size=n, p=activity / activity.sum())
    if drift and drift.device_weights and late.any():
        boost = _weights(DEVICES, drift.device_weights, "drift.device_weights")[device_idx]
        p = activity * boost
        user_idx[late] = rng.choice(len(users), size=int(late.sum()), p=p / p.sum())

    # Articles already published, recent ones more likely.
    pub = (articles["published_at"] - start).dt.total_seconds().to_numpy()
    available = np.searchsorted(pub, secs, side="right")
    back = np.floor(rng.exponential(max(len(articles) / 8, 1.0), size=n)).astype(np.int64)
    art_idx = np.clip(available - 1 - back, 0, len(articles) - 1)

    click_probability = click_probabilities(cfg, users, articles, user_idx, art_idx, secs, late)
    clicked = rng.random(n) < click_probability
    body_words = articles["body"].str.count(" ").to_numpy()[art_idx] + 1
    dwell = rng.lognormal(np.log(2.0 * body_words), 0.5, size=n)
    if drift and drift.dwell_scale != 1.0:
        dwell[late] *= drift.dwell_scale
    return pd.DataFrame({
        "event_id": np.arange(1, n + 1, dtype=np.int64),
        "user_id": users["user_id"].to_numpy()[user_idx],
        "article_id": articles["article_id"].to_numpy()[art_idx],
        "event_timestamp": ts,
        "clicked": clicked,
        "dwell_seconds": np.where(clicked, np.round(dwell, 2), 0.0),
        "_click_probability": click_probability,
    })


def click_probabilities(cfg: GeneratorConfig, users: pd.DataFrame, articles: pd.DataFrame,
                        user_idx: np.ndarray, art_idx: np.ndarray, secs: np.ndarray,
                        late: np.ndarray) -> np.ndarray:
    """The world's true click model: the probability that the users at rows `user_idx` click the
    articles at rows `art_idx`, `secs` seconds after the start (`late`: after the drift)."""
    drift = cfg.drift
    start = pd.Timestamp(cfg.start, tz="UTC")
    pub = (articles["published_at"] - start).dt.total_seconds().to_numpy()
    device_idx = users["device"].map({d: i for i, d in enumerate(DEVICES)}).to_numpy()
    topic_idx = articles["topic"].map({t: i for i, t in enumerate(TOPICS)}).to_numpy()[art_idx]
    fav = ((users["_fav0"].to_numpy()[user_idx] == topic_idx)
           | (users["_fav1"].to_numpy()[user_idx] == topic_idx))
    fav_effect = np.full(len(user_idx), cfg.favorite_topic_effect)
    dev_effects = np.array([cfg.device_effects.get(d, 0.0) for d in DEVICES])
    dev_effect = dev_effects[device_idx[user_idx]]
    if drift and drift.favorite_topic_effect is not None:
        fav_effect[late] = drift.favorite_topic_effect
    if drift and drift.device_effects is not None:
        late_effects = np.array([drift.device_effects.get(d, 0.0) for d in DEVICES])
        dev_effect[late] = late_effects[device_idx[user_idx][late]]
    age_days = (secs - pub[art_idx]) / 86400.0
    logit = (-1.6 + fav_effect * fav + dev_effect + users["_propensity"].to_numpy()[user_idx]
             + articles["_quality"].to_numpy()[art_idx] - 0.04 * np.clip(age_days, 0, None))
    return 1.0 / (1.0 + np.exp(-logit))


def generate(cfg: GeneratorConfig) -> World:
    """Generate articles, users and events from `cfg`; the same config gives the same data."""
    rng = np.random.default_rng(cfg.seed)
    articles = _articles(cfg, rng)
    users = _users(cfg, rng)
    events = _events(cfg, rng, articles, users)
    return World(articles=articles, users=users, events=events)


def public(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the hidden columns (names starting with `_`) that only the generator knows."""
    return df[[c for c in df.columns if not c.startswith("_")]]

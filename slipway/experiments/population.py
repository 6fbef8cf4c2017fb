"""A simulated user population that answers with the generated world's true click model.

Users arrive in proportion to their activity; each visit shows the top `shown` of `candidates`
recent articles in the order the app ranked them, and each shown article is clicked with the
world's true probability for that user and article (`slipway.data.generate`), with dwell seconds
drawn as the generator draws them. A ranker that puts likelier clicks on top therefore earns more
clicks, as it would with real users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from slipway.data.generate import GeneratorConfig, World, click_probabilities, generate


@dataclass
class Visit:
    """One user's request: who, where from, and the candidate articles."""

    user_id: int
    country: str
    device: str
    article_ids: list[int]


class Population:
    """Users of one generated world, visiting at the end of its period."""

    def __init__(self, generator: GeneratorConfig, seed: int) -> None:
        self.cfg = generator
        self.world: World = generate(generator)
        self.rng = np.random.default_rng(seed)
        self.secs = generator.days * 86400.0  # the visits happen at the world's end
        self.user_row = {u: i for i, u in enumerate(self.world.users["user_id"])}
        self.article_row = {a: i for i, a in enumerate(self.world.articles["article_id"])}

    def visits(self, count: int, candidates: int) -> list[Visit]:
        """`count` visits: users drawn by activity, candidates among the recent articles."""
        users = self.world.users
        activity = users["_activity"].to_numpy()
        rows = self.rng.choice(len(users), size=count, p=activity / activity.sum())
        recent = self.world.articles["article_id"].to_numpy()[-max(candidates * 3, 30):]
        return [Visit(int(users["user_id"].iat[r]), str(users["country"].iat[r]),
                      str(users["device"].iat[r]),
                      [int(a) for a in self.rng.choice(recent, size=candidates, replace=False)])
                for r in rows]

    def react(self, user_id: int, ranked: list[int], shown: int) -> pd.DataFrame:
        """The user's outcome on the top `shown` of `ranked`: one row per shown article with
        `article_id`, `clicked` and `dwell_seconds` (0 without a click)."""
        top = ranked[:shown]
        user_idx = np.full(len(top), self.user_row[user_id])
        art_idx = np.array([self.article_row[a] for a in top])
        drift = self.cfg.drift
        late = bool(drift) and self.secs >= (drift.start - self.cfg.start).days * 86400
        p = click_probabilities(self.cfg, self.world.users, self.world.articles, user_idx,
                                art_idx, np.full(len(top), self.secs), np.full(len(top), late))
        clicked = self.rng.random(len(top)) < p
        words = self.world.articles["body"].str.count(" ").to_numpy()[art_idx] + 1
        dwell = self.rng.lognormal(np.log(2.0 * words), 0.5)
        return pd.DataFrame({"article_id": top, "clicked": clicked,
                             "dwell_seconds": np.where(clicked, np.round(dwell, 2), 0.0)})

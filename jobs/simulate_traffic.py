"""Send a simulated user population through the running app and post what the users did.

Each visit asks `/v1/rank` to order candidate articles for a user of the generated world (the
storage root's last `jobs.generate` run says which world), shows the top `shown`, draws clicks
and dwell from the world's true click model (slipway.experiments.population) and posts them to
`/v1/events` keyed by the answer's request id. A ranker that orders better earns more clicks.

    SLIPWAY_API_KEY=... python -m jobs.simulate_traffic --set url=http://127.0.0.1:8000
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.data.generate import GeneratorConfig
from slipway.experiments.population import Population, Visit
from slipway.storage import Storage


class SimulateConfig(JobConfig):
    """Where the app is and how much traffic to send."""

    url: str = "http://127.0.0.1:8000"
    api_key_env: str = Field(default="SLIPWAY_API_KEY", description="variable holding the key")
    visits: int = Field(default=1000, ge=1)
    candidates: int = Field(default=20, ge=2, le=200)
    shown: int = Field(default=3, ge=1)
    concurrency: int = Field(default=8, ge=1, le=64)
    round_visits: int = Field(default=100, ge=1, description="visits between event posts")
    events_batch: int = Field(default=500, ge=1, le=1000, description="events per POST")
    seed: int = 0


def world_config(storage: Storage) -> GeneratorConfig:
    """The generator config of the root's newest `jobs.generate` run."""
    manifests = sorted(storage.list_files("runs", "generate"))
    if not manifests:
        raise JobFailed(f"no jobs.generate run under {storage.uri('runs')}; the simulation "
                        "needs the generated world the app's models were trained on")
    name = manifests[-1].rsplit("/", 1)[1]
    return GeneratorConfig.model_validate(
        storage.read_json("runs", "generate", name)["config"]["generator"])


def post(client: httpx.Client, path: str, body: dict, tries: int = 60) -> httpx.Response:
    """POST as a well-behaved client: on 429 wait the `Retry-After` the app names, then again;
    any other error status raises."""
    for _ in range(tries):
        reply = client.post(path, json=body)
        if reply.status_code != 429:
            return reply.raise_for_status()
        time.sleep(float(reply.headers.get("retry-after", 1)))
    raise JobFailed(f"{path}: still rate-limited after {tries} tries; raise the key's "
                    "rate_per_minute or send fewer visits")


def main(cfg: SimulateConfig) -> dict[str, int]:
    """Run the visits; return clicks and visits per variant (`-` outside any experiment)."""
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise JobFailed(f"set {cfg.api_key_env} to an API key of the app (api_key_env)")
    population = Population(world_config(Storage(cfg.storage.root)), cfg.seed)
    visits = population.visits(cfg.visits, cfg.candidates)
    clicks: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    posted = 0
    with httpx.Client(base_url=cfg.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client, ThreadPoolExecutor(cfg.concurrency) as pool:

        def visit(v: Visit) -> tuple[str, str, list[int]]:
            reply = post(client, "/v1/rank", {
                "user_id": v.user_id, "article_ids": v.article_ids,
                "context": {"country": v.country, "device": v.device}})
            body = reply.json()
            return (reply.headers["x-request-id"], body.get("variant") or "-",
                    [r["article_id"] for r in body["ranking"]])

        # Visits in rounds, each round's outcomes posted before the next: events arrive while
        # the experiment runs, as real users' would.
        for start in range(0, len(visits), cfg.round_visits):
            events: list[dict] = []
            batch = visits[start:start + cfg.round_visits]
            for v, (request_id, variant, ranked) in zip(batch, pool.map(visit, batch),
                                                        strict=True):
                outcome = population.react(v.user_id, ranked, cfg.shown)
                seen[variant] += 1
                clicks[variant] += int(outcome["clicked"].sum())
                for row in outcome.itertuples(index=False):
                    base = {"request_id": request_id, "user_id": v.user_id,
                            "article_id": int(row.article_id)}
                    events.append({**base, "type": "impression"})
                    if row.clicked:
                        events += [{**base, "type": "click"},
                                   {**base, "type": "dwell", "value": float(row.dwell_seconds)}]
            for first in range(0, len(events), cfg.events_batch):
                post(client, "/v1/events", {"events": events[first:first + cfg.events_batch]})
            posted += len(events)
    for variant in sorted(seen):
        print(f"{variant}: {seen[variant]} visits, {clicks[variant]} clicks "
              f"({clicks[variant] / seen[variant]:.3f} per visit)")
    print(f"posted {posted} events to {cfg.url}/v1/events")
    return {**{f"visits:{k}": n for k, n in seen.items()},
            **{f"clicks:{k}": n for k, n in clicks.items()}}


if __name__ == "__main__":
    run_job(SimulateConfig, main, __doc__)

"""Keep the stream features fresh: run the consumer group that turns outcome events on the stream
into per-user and per-article window features in Feast (slipway/streaming).

Starts `consumer.consumers` Ray actors (restarted by Ray if they die) and reports their progress
and the group's lag every `report_every_s`, until `run_for_s` has passed or the job is stopped:

    ray job submit -- python -m jobs.stream_features --config configs/stream_features.yaml
"""

from __future__ import annotations

import time

import ray
from pydantic import Field

from slipway.cli import run_job
from slipway.config import JobConfig
from slipway.features.settings import FeatureStoreSettings
from slipway.features.store import apply_definitions, open_store
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.streaming.consumer import ConsumerSettings, start_consumers, stop_consumers
from slipway.tracking import track_run


class StreamFeaturesConfig(JobConfig):
    """The stream, its consumers and the feature store they write."""

    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    run_for_s: float | None = Field(default=None, gt=0,
                                    description="stop after this long (None: until stopped)")
    report_every_s: float = Field(default=10.0, gt=0)


def main(cfg: StreamFeaturesConfig) -> dict[str, int]:
    """Run the consumers; their totals when they stop."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    apply_definitions(open_store(cfg.feature_store, storage), storage)
    with track_run("stream_features", cfg, storage) as run:
        consumers = start_consumers(cfg.consumer, storage.root, cfg.feature_store.model_dump())
        start = time.monotonic()
        totals: dict[str, int] = {}
        try:  # until run_for_s, or until stopped (Ctrl-C, `ray job stop`)
            while cfg.run_for_s is None or time.monotonic() - start < cfg.run_for_s:
                time.sleep(cfg.report_every_s if cfg.run_for_s is None
                           else min(cfg.report_every_s, cfg.run_for_s))
                stats = ray.get([c.stats.remote() for c in consumers])
                totals = {k: sum(s[k] for s in stats)
                          for k in ("processed", "dead_lettered", "pushed_rows")}
                totals.update(lag=stats[0]["lag"], pending=stats[0]["pending"])
                run.log(totals)
                print(f"stream {cfg.consumer.stream.name}: {totals['processed']:,} events, "
                      f"{totals['dead_lettered']:,} dead-lettered, {totals['pushed_rows']:,} "
                      f"feature rows pushed; lag {totals['lag']:,}, pending {totals['pending']:,}",
                      flush=True)
        except KeyboardInterrupt:
            print("stopping the consumers", flush=True)
        finally:
            stop_consumers(consumers)
    return totals


if __name__ == "__main__":
    run_job(StreamFeaturesConfig, main, __doc__)
    ray.shutdown()

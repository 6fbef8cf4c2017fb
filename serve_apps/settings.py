"""The Serve application's arguments (`args:` in `configs/serve/*.yaml`), validated by pydantic.

Serve passes the YAML's `args` to `serve_apps.app:build`; unknown keys and wrong types fail the
deploy with a message naming the key. Replica counts, autoscaling and resources are Serve's own
per-deployment settings in the same YAML, not repeated here.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator

from llm.lexical_index import Mode
from slipway.config import StrictModel
from slipway.features.settings import FeatureStoreSettings
from slipway.streaming.stream import StreamSettings


class AuthSettings(StrictModel):
    """Bearer API keys: from an environment variable and/or a secrets file (never from here)."""

    enabled: bool = True
    keys_env: str = Field(default="SLIPWAY_API_KEYS",
                          description="variable holding `name=key` pairs, comma-separated")
    keys_file: str | None = Field(default=None, description="YAML secrets file (see auth.py)")
    rate_per_minute: float = Field(
        default=600.0, gt=0, description="per key: for the whole app with `redis_url`, else per "
        "ingress replica (N replicas let a key send up to N times this)")
    burst: int = Field(default=60, ge=1, description="requests a key may send at once")
    redis_url: str | None = Field(
        default=None, description="redis://host:port: token buckets shared by every ingress "
        "replica, so the limits hold app-wide (if Redis is unreachable, each replica limits "
        "alone until it is back)")


class LoggingSettings(StrictModel):
    """The prediction log: Parquet files under `<root>/predictions/<route>/date=YYYY-MM-DD/`."""

    enabled: bool = True
    flush_rows: int = Field(default=256, ge=1, description="write once this many are buffered")
    flush_interval_s: float = Field(default=2.0, gt=0, description="or after this long")
    max_buffered_rows: int = Field(
        default=100_000, ge=1, description="rows held while storage is unreachable; past it the "
        "oldest are dropped and counted (slipway_prediction_log_dropped_rows_total)")


class GeneratorSettings(StrictModel):
    """The vLLM engine: a base model and the LoRA adapters requests may select by name."""

    base: str = Field(default="registry:base_lm", description="model reference (llm/base.py)")
    adapters: dict[str, str] = Field(
        default_factory=lambda: {"articles_lora": "registry:articles_lora"},
        description="served name -> adapter reference")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"dtype": "float32", "max_model_len": 512,
                                 "kv_cache_memory_bytes": 1 << 30, "enforce_eager": True,
                                 "max_lora_rank": 16},
        description="vLLM AsyncEngineArgs (the CPU-friendly defaults; drop kv_cache_memory_bytes "
                    "and dtype on a GPU)")


class AppSettings(StrictModel):
    """Everything the application's deployments load, by registry name and storage root."""

    storage_root: str = "data"
    classifier_model: str = "article_topic"
    ranker_model: str = "engagement"
    index_name: str = Field(default="articles", pattern=r"^[A-Za-z0-9_-]+$")
    index_shards: int = Field(default=1, ge=1, description="the index's shards (its "
                              "index.shards): above 1, each is searched by an IndexShard "
                              "deployment of its own; 1: the Retriever searches the index")
    retrieval_mode: Mode = Field(default="hybrid", description="how /v1/retrieve and /v1/rag "
                                 "search when a request does not say: dense, lexical or hybrid")
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    stream: StreamSettings | None = Field(
        default=None, description="where /v1/events also publishes each event, for the stream "
        "features (jobs.stream_features consumes it); None: the event log only")
    generator: GeneratorSettings = GeneratorSettings()
    rag_model: str = Field(default="articles_lora",
                           description="served model /v1/rag answers with unless asked for another")
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="larger bodies get 413")
    follow_interval_s: float = Field(
        default=10.0, ge=0, description="how often each replica checks the registry aliases it "
        "serves and loads a promoted or rolled-back version (0: load once, at start)")

    @field_validator("storage_root")
    @classmethod
    def _absolute_root(cls, root: str) -> str:
        # Pinned when the app is built (in the folder `serve run` was started from), so every
        # replica reads the same folder wherever it runs.
        return root if "://" in root else os.path.abspath(root)

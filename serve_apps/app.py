"""The platform's Serve application: `serve run configs/serve/app.yaml` (or `serve deploy`).

`build(args)` is the import path Serve calls with the YAML's `args` (validated as `AppSettings`);
the YAML's `deployments:` section sets each deployment's replicas, autoscaling and resources.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_apps.classifier import Classifier
from serve_apps.generator import Generator
from serve_apps.ingress import Ingress
from serve_apps.ranker import Ranker
from serve_apps.retriever import IndexShard, Retriever
from serve_apps.settings import AppSettings
from slipway.config import validate_config


def build(args: dict[str, Any]) -> Application:
    """The ingress bound to the four model deployments (and with `index_shards` > 1, the
    Retriever to one `IndexShard{i}` deployment per shard), configured by `args`."""
    s = validate_config(AppSettings, args, "serve application args")
    root = s.storage_root
    every = s.follow_interval_s
    shards = [IndexShard.options(name=f"IndexShard{i}").bind(root, s.index_name, i)
              for i in range(s.index_shards)] if s.index_shards > 1 else None
    return Ingress.bind(
        Classifier.bind(root, s.classifier_model, every),
        Ranker.bind(root, s.ranker_model, s.feature_store.model_dump(), every),
        Retriever.bind(root, s.index_name, every, shards),
        Generator.bind(root, s.generator.model_dump(), every),
        s.model_dump(),
    )

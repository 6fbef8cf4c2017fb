"""A thin online reader for Feast's Redis online store.

Feast's `get_online_features` spends about 10 ms of Python per call here on work that does not
depend on the request (resolving the feature service, building response protos, converting them
to a frame); the Redis round trip is well under a millisecond. This reader resolves the service
once, then per call builds Feast's own keys (`serialize_entity_key` + project, and the
`mmh3("<view>:<feature>")` hash fields of `RedisOnlineStore`), reads every view of every row in
one pipelined round trip and decodes Feast's value protos. The feature definitions stay Feast's;
tests/serve/test_ranker_stores.py checks that it returns exactly what Feast returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type


@dataclass(frozen=True)
class _View:
    join_key: str
    features: list[str]
    fields: list[bytes | str]  # Feast's hash field per feature


class RedisOnlineReader:
    """The online features of one feature service, read from Feast's Redis layout."""

    def __init__(self, store: FeatureStore, service: str) -> None:
        config = store.config
        if config.online_store.type != "redis":
            raise ValueError(f"RedisOnlineReader needs online_store.type redis, not "
                             f"{config.online_store.type!r}; read other stores through Feast")
        redis_store = RedisOnlineStore()
        self.client = redis_store._get_client(config.online_store)
        self.suffix = config.project.encode()
        self.key_version = config.entity_key_serialization_version
        self.views: list[_View] = []
        for projection in store.get_feature_service(service).feature_view_projections:
            view = store.get_feature_view(projection.name)
            names = [f.name for f in projection.features]
            _, fields = redis_store._generate_hset_keys_for_features(
                view, list(names), fv_name_override=_versioned_fv_name(view, config))
            self.views.append(_View(view.join_keys[0], names, fields[:-1]))  # no _ts field

    def _key(self, join_key: str, value: int) -> bytes:
        proto = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=value)])
        return serialize_entity_key(proto, self.key_version) + self.suffix

    def read(self, rows: list[dict[str, int]]) -> pd.DataFrame:
        """Like `online_features`: the rows' keys, then every feature (None where the store
        has nothing), one row per input row, in one Redis round trip."""
        pipe = self.client.pipeline(transaction=False)
        for view in self.views:
            for row in rows:
                pipe.hmget(self._key(view.join_key, int(row[view.join_key])), view.fields)
        replies = iter(pipe.execute())
        columns: dict[str, list] = {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
        for view in self.views:
            values = [next(replies) for _ in rows]
            for i, name in enumerate(view.features):
                columns[name] = [_python(reply[i]) for reply in values]
        return pd.DataFrame(columns)


def _python(raw: bytes | None) -> object:
    """A stored Feast value proto as Python (None when absent or unset)."""
    if not raw:
        return None
    value = Value()
    value.ParseFromString(raw)
    return feast_value_type_to_python_type(value)

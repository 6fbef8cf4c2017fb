"""Bearer API keys and per-key rate limits for the `/v1` routes.

Keys come from an environment variable (`name=key,name2=key2`) and/or a YAML secrets file:

    keys:
      - name: web-frontend
        key: sk-...
        rate_per_minute: 1200   # optional, else the app's default
        burst: 100              # optional, else the app's default

Only key names reach logs and the prediction log; keys are compared by SHA-256 digest in constant
time. Rate limits are token buckets per key. With `auth.redis_url` the buckets live in Redis
(one atomic script per request, timed by Redis's clock) and hold for the whole app; without it
each ingress replica keeps its own, so N replicas let a key send up to N times its rate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from fastapi import HTTPException

from serve_apps.settings import AuthSettings

logger = logging.getLogger("ray.serve")


@dataclass
class ApiKey:
    """A known key: its name, digest and rate."""

    name: str
    digest: bytes
    rate_per_minute: float
    burst: int


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(settings: AuthSettings) -> list[ApiKey]:
    """Keys from `settings.keys_env` and `settings.keys_file`; errors name the bad entry."""
    keys: list[ApiKey] = []
    for i, pair in enumerate(p for p in os.environ.get(settings.keys_env, "").split(",")
                             if p.strip()):
        name, sep, key = pair.strip().partition("=")
        if not sep or not name or not key:
            raise ValueError(f"{settings.keys_env} entry {i + 1} is not name=key; "
                             "write NAME=KEY pairs separated by commas")
        keys.append(ApiKey(name, _digest(key), settings.rate_per_minute, settings.burst))
    if settings.keys_file:
        with open(settings.keys_file) as f:
            doc = yaml.safe_load(f) or {}
        for i, entry in enumerate(doc.get("keys", [])):
            if not isinstance(entry, dict) or not entry.get("name") or not entry.get("key"):
                raise ValueError(f"{settings.keys_file}: keys[{i}] needs `name` and `key`")
            keys.append(ApiKey(entry["name"], _digest(str(entry["key"])),
                               float(entry.get("rate_per_minute", settings.rate_per_minute)),
                               int(entry.get("burst", settings.burst))))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"API key names must be unique; got {sorted(names)}")
    return keys


@dataclass
class Bucket:
    """A token bucket: `rate` tokens per second up to `capacity`, timed by `clock` (seconds)."""

    rate: float
    capacity: float
    tokens: float
    clock: Callable[[], float] = time.monotonic
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.updated = self.clock()

    def take(self) -> float:
        """Take one token; return 0 if granted, else the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


# Refill, then take one token if there is one; the wait in seconds otherwise (as a string:
# Redis turns Lua numbers into integers).
TAKE_SCRIPT = """
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = math.min(capacity, (tonumber(state[1]) or capacity)
                        + (now - (tonumber(state[2]) or now)) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""


class SharedBucket:
    """A token bucket in Redis, shared by every ingress replica; a replica's own `Bucket`
    stands in while Redis cannot be reached."""

    def __init__(self, client: Any, name: str, local: Bucket) -> None:
        self.take_script = client.register_script(TAKE_SCRIPT)
        self.key, self.local = f"slipway:ratelimit:{name}", local

    def take(self) -> float:
        """Take one token; return 0 if granted, else the seconds until one is available."""
        import redis

        try:
            return float(self.take_script(keys=[self.key],
                                          args=[self.local.rate, self.local.capacity]))
        except redis.RedisError as exc:
            logger.warning("rate limit: Redis unreachable (%s); limiting in this replica", exc)
            return self.local.take()


class Gate:
    """Checks the Authorization header and the key's rate; raises 401/403/429 HTTP errors."""

    def __init__(self, settings: AuthSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = settings.enabled
        self.keys = load_keys(settings) if settings.enabled else []
        if settings.enabled and not self.keys:
            raise ValueError(f"auth is enabled but no API keys were found: set {settings.keys_env}"
                             " (name=key pairs) or auth.keys_file, or set auth.enabled: false")
        self.buckets: dict[str, Bucket | SharedBucket] = {
            k.name: Bucket(k.rate_per_minute / 60, k.burst, k.burst, clock) for k in self.keys}
        if settings.redis_url:
            import redis

            client = redis.Redis.from_url(settings.redis_url, socket_timeout=0.5,
                                          socket_connect_timeout=0.5)
            self.buckets = {name: SharedBucket(client, name, bucket)
                            for name, bucket in self.buckets.items()}

    def check(self, authorization: str | None) -> str:
        """The caller's key name, or an HTTPException (401 no/malformed credentials, 403 unknown
        key, 429 over the rate with Retry-After)."""
        if not self.enabled:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})
        digest = _digest(token.strip())
        key = next((k for k in self.keys if hmac.compare_digest(k.digest, digest)), None)
        if key is None:
            raise HTTPException(403, "API key not recognised; ask for a key or check it")
        wait = self.buckets[key.name].take()
        if wait:
            raise HTTPException(429, f"rate limit of {key.rate_per_minute:g}/min exceeded for "
                                f"key {key.name!r}; retry after the Retry-After seconds",
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return key.name

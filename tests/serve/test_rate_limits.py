"""Rate limits hold for the whole app when the buckets are shared in Redis: two ingress
replicas (two Gates) let a key through `burst` times in all, where unshared buckets let it
through `burst` times in each (the other side of the change)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from serve_apps.auth import Gate
from serve_apps.settings import AuthSettings


def granted(gates: list[Gate], attempts: int) -> int:
    """Requests let through when `attempts` go round-robin across the replicas' gates."""
    passed = 0
    for i in range(attempts):
        try:
            gates[i % len(gates)].check("Bearer sk-shared-0123")
            passed += 1
        except HTTPException as exc:
            assert exc.status_code == 429 and int(exc.headers["Retry-After"]) >= 1
    return passed


def test_two_replicas_share_one_bucket_per_key_in_redis(redis_url, monkeypatch):
    monkeypatch.setenv("SLIPWAY_TEST_SHARED_KEYS", "web=sk-shared-0123")
    # 1 request a minute refills nothing during the test: only the burst of 5 gets through.
    common = {"keys_env": "SLIPWAY_TEST_SHARED_KEYS", "rate_per_minute": 1, "burst": 5}
    alone = [Gate(AuthSettings(**common)) for _ in range(2)]
    assert granted(alone, 20) == 10  # per replica: twice the configured burst
    shared = [Gate(AuthSettings(**common, redis_url=f"redis://{redis_url}")) for _ in range(2)]
    assert granted(shared, 20) == 5  # app-wide: the configured burst


def test_an_unreachable_redis_falls_back_to_the_replicas_own_bucket(monkeypatch):
    monkeypatch.setenv("SLIPWAY_TEST_SHARED_KEYS", "web=sk-shared-0123")
    gate = Gate(AuthSettings(keys_env="SLIPWAY_TEST_SHARED_KEYS", rate_per_minute=1, burst=3,
                             redis_url="redis://127.0.0.1:1"))  # nothing listens there
    assert granted([gate], 6) == 3
    with pytest.raises(HTTPException, match="rate limit"):
        gate.check("Bearer sk-shared-0123")

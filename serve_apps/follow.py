"""Deployments follow the registry: promotions and rollbacks reach the running app.

Each replica looks up the alias it serves every `interval_s` (a small JSON read) on a daemon
thread and, when the alias moved, loads the new version there, off the event loop, then swaps
it in with one assignment. A request keeps the (model, version) pair it started with, so none
fails during the switch; every response and `/readyz` name the version that answered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("ray.serve")


def follow(refresh: Callable[[], None], interval_s: float, what: str) -> threading.Event:
    """Call `refresh` every `interval_s` seconds on a daemon thread (0: never); a failing call
    is logged and the loaded version kept. Set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                refresh()
            except Exception:  # storage blip, half-registered version: keep serving
                logger.exception("following %s failed; keeping the loaded version", what)

    if interval_s > 0:
        threading.Thread(target=loop, daemon=True, name=f"follow {what}").start()
    return stop

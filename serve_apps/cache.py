"""An exact-match answer cache: LRU with a time to live (cachetools' TTLCache), keyed by the
model, its version and the normalized input text, so an entry is never served for another
version. One per replica; used from its event loop only (TTLCache is not thread-safe)."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import TTLCache


def normalize(text: str) -> str:
    """The cache's form of an input: Unicode NFC, whitespace runs as one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


class AnswerCache:
    """Per-text answers of model versions; `max_entries` 0 keeps nothing."""

    def __init__(self, max_entries: int, ttl_s: float,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self.entries = TTLCache(max_entries, ttl_s, timer=timer) if max_entries else None

    def get(self, model: str, version: int, texts: Sequence[str]) -> list[Any | None]:
        """Each text's cached answer by `model` `version`, None where there is none."""
        if self.entries is None:
            return [None] * len(texts)
        return [self.entries.get((model, version, normalize(t))) for t in texts]

    def put(self, model: str, version: int, texts: Sequence[str], answers: Sequence[Any]
            ) -> None:
        """Keep `answers` (one per text) as `model` `version`'s."""
        if self.entries is not None:
            for text, answer in zip(texts, answers, strict=True):
                self.entries[(model, version, normalize(text))] = answer

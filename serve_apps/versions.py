"""Model versions a replica holds side by side, by the references requests use.

A reference is an alias (`champion`) or a version number (`7`): experiment variants name the
versions they compare, and requests outside any experiment use the deployment's default. A
reference is loaded on its first request; an alias is loaded again when it moves (`refresh`, run
by the replica's follower); at most `capacity` references stay loaded, the least recently used
other than the default making room.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from slipway.registry import ModelVersion, Registry


class Versions:
    """Loaded (model, version) pairs of one registry model, keyed by reference."""

    def __init__(self, registry: Registry, model_name: str, default: str | int = "champion",
                 capacity: int = 4) -> None:
        self.registry, self.model_name, self.capacity = registry, model_name, capacity
        self.default = default
        self.loaded: dict[str | int, tuple[Any, ModelVersion]] = {}
        self.used: dict[str | int, float] = {}
        self._loading = threading.Lock()
        self.get(default)

    def get(self, ref: str | int | None = None) -> tuple[Any, ModelVersion]:
        """The (model, version) `ref` names (the default when None), loaded on first use."""
        ref = self.default if ref is None else ref
        self.used[ref] = time.monotonic()
        if ref not in self.loaded:
            with self._loading:
                if ref not in self.loaded:
                    pair = self.registry.load(self.model_name, ref)
                    kept = sorted((r for r in self.loaded if r != self.default),
                                  key=lambda r: self.used.get(r, 0.0))
                    drop = kept[:max(0, len(self.loaded) + 1 - self.capacity)]
                    self.loaded = {**{r: p for r, p in self.loaded.items() if r not in drop},
                                   ref: pair}
        return self.loaded[ref]

    def peek(self, ref: str | int | None = None) -> ModelVersion | None:
        """The version `ref` names if it is loaded (without loading it), else None."""
        pair = self.loaded.get(self.default if ref is None else ref)
        return None if pair is None else pair[1]

    def refresh(self) -> None:
        """Load again each alias whose version moved (a promotion or rollback): one read of
        the aliases; a numbered version never moves."""
        aliases = self.registry.aliases(self.model_name)
        with self._loading:
            moved = {ref: self.registry.load(self.model_name, ref)
                     for ref, (_, mv) in self.loaded.items()
                     if isinstance(ref, str) and aliases.get(ref) != mv.version}
            if moved:
                self.loaded = {**self.loaded, **moved}

    def set_default(self, ref: str | int) -> None:
        """Make `ref` the default (loading it now)."""
        self.get(ref)
        self.default = ref

"""The model registry on the storage root: versions with lineage, and movable aliases.

    models/<name>/versions/<NNNN>/model.safetensors   weights (safetensors: nothing unpickled)
    models/<name>/versions/<NNNN>/files/...           or a whole folder (an HF model, an adapter)
    models/<name>/versions/<NNNN>/metadata.json       architecture, metrics, config, lineage
    models/<name>/aliases.json                        {"aliases": {...}, "history": [...]}

Aliases (`champion`, `challenger`) point at versions; every move is kept in the history, so a
rollback moves an alias back to the version it pointed at before.

Concurrent writers (a retraining the monitor triggered and a scheduled pipeline) are safe on a
local or shared disk and on S3 or GCS: a version number is claimed by creating its `.claim` file
exclusively, and an alias move is a read-modify-write that no other move can interleave with
(`Storage.update_json`: a lock file on disks, conditional writes on object stores).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from slipway.storage import Storage, local_cache

CLAIM = ".claim"  # created exclusively: the version number is taken
# Metadata keys the registry writes itself; the rest is what the registrant recorded.
OWN_KEYS = ("name", "version", "created_at", "architecture", "artifact_uri", "format", "kind")
# Architectures the registry can rebuild, by name; loading never runs code named by the data.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def architecture(name: str) -> Callable[[Callable[..., torch.nn.Module]],
                                        Callable[..., torch.nn.Module]]:
    """Class decorator: make a model class loadable from the registry under `name`."""

    def register(cls: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        ARCHITECTURES[name] = cls
        return cls

    return register


# Loaders of versions stored as folders for another runtime (`runtime` in their metadata, e.g.
# `onnxruntime`), by runtime name: each takes the local folder and the version.
RUNTIMES: dict[str, Callable[[str, ModelVersion], Any]] = {}


def runtime(name: str) -> Callable[[Callable[[str, ModelVersion], Any]],
                                   Callable[[str, ModelVersion], Any]]:
    """Function decorator: make a folder loader the registry's loader for runtime `name`."""

    def register(loader: Callable[[str, ModelVersion], Any]) -> Callable[[str, ModelVersion], Any]:
        RUNTIMES[name] = loader
        return loader

    return register


class RegistryError(LookupError):
    """A model, version or alias that does not exist; the message lists what does."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: where it lives and everything recorded about it."""

    name: str
    version: int
    uri: str
    metadata: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """Evaluation metrics recorded with the version."""
        return self.metadata.get("metrics", {})

    @property
    def recorded(self) -> dict[str, Any]:
        """What the registrant recorded (metrics, lineage, config): the metadata without the
        registry's own keys, as a copy registered again would take it."""
        return {k: v for k, v in self.metadata.items() if k not in OWN_KEYS}


class Registry:
    """Register, find, alias and load model versions under `<root>/models/`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _dir(self, name: str, version: int) -> tuple[str, ...]:
        return ("models", name, "versions", f"{version:04d}")

    def write_file(self, name: str, version: int, data: bytes, *parts: str) -> str:
        """Store a file (an evaluation report, a plot) beside a version; return its URI."""
        with self.storage.open_output(*self._dir(name, version), *parts) as out:
            out.write(data)
        return self.storage.uri(*self._dir(name, version), *parts)

    def read_file(self, name: str, version: int, *parts: str) -> bytes | None:
        """A file stored beside a version (`write_file`), or None if there is none."""
        if not self.storage.exists(*self._dir(name, version), *parts):
            return None
        return self.storage.read_bytes(*self._dir(name, version), *parts)

    def versions(self, name: str, claimed: bool = False) -> list[int]:
        """Registered version numbers of `name`, ascending (with `claimed`, also those being
        registered now)."""
        files = self.storage.list_files("models", name, "versions")
        ends = ("metadata.json", CLAIM) if claimed else ("metadata.json",)
        return sorted({int(f.rsplit("/versions/", 1)[1].split("/")[0]) for f in files
                       if f.endswith(ends)})

    def _claim(self, name: str) -> int:
        """The next version number of `name`, taken for this caller alone."""
        while True:
            version = (self.versions(name, claimed=True) or [0])[-1] + 1
            if self.storage.create_exclusive(b"", *self._dir(name, version), CLAIM):
                return version

    def register(self, name: str, state_dict: dict[str, torch.Tensor], arch: str,
                 arch_params: dict[str, Any], **metadata: Any) -> ModelVersion:
        """Save weights and metadata as the next version of `name`."""
        if arch not in ARCHITECTURES:
            raise RegistryError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
        version = self._claim(name)
        parts = self._dir(name, version)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        with self.storage.open_output(*parts, "model.safetensors") as out:
            out.write(save_safetensors(tensors))
        meta = {"name": name, "version": version, "created_at": time.time(),
                "architecture": {"name": arch, "params": arch_params},
                "artifact_uri": self.storage.uri(*parts, "model.safetensors"), **metadata}
        self.storage.write_json(meta, *parts, "metadata.json")
        return ModelVersion(name, version, self.storage.uri(*parts), meta)

    def register_folder(self, name: str, folder: str, kind: str, **metadata: Any
                        ) -> ModelVersion:
        """Save a local folder (a Hugging Face model or adapter directory) as the next version of
        `name`; `kind` says what it is (`base_lm`, `lora_adapter`, `merged_lm`)."""
        version = self._claim(name)
        parts = self._dir(name, version)
        self.storage.upload(folder, *parts, "files")
        meta = {"name": name, "version": version, "created_at": time.time(), "format": "folder",
                "kind": kind, "artifact_uri": self.storage.uri(*parts, "files"), **metadata}
        self.storage.write_json(meta, *parts, "metadata.json")
        return ModelVersion(name, version, self.storage.uri(*parts), meta)

    def fetch(self, name: str, ref: str | int = "champion") -> tuple[str, ModelVersion]:
        """A local folder holding the files of a folder-format version: the folder itself on a
        local root, else a copy under `~/.cache/slipway/models/`."""
        mv = self.get(name, ref)
        if mv.metadata.get("format") != "folder":
            raise RegistryError(f"{name} v{mv.version} is a weights file; use Registry.load")
        parts = (*self._dir(name, mv.version), "files")
        if self.storage.is_local:
            return self.storage.uri(*parts), mv
        local = self.storage.download(local_cache("models", name, f"{mv.version:04d}"), *parts)
        return local, mv

    def _aliases(self, name: str) -> dict[str, Any]:
        if not self.storage.exists("models", name, "aliases.json"):
            return {"aliases": {}, "history": []}
        return self.storage.read_json("models", name, "aliases.json")

    def aliases(self, name: str) -> dict[str, int]:
        """Current aliases of `name`: alias -> version."""
        return dict(self._aliases(name)["aliases"])

    def get(self, name: str, ref: str | int = "champion") -> ModelVersion:
        """A version by number or alias."""
        known = self.versions(name)
        if not known:
            raise RegistryError(f"no model named {name!r} under {self.storage.uri('models')}")
        if isinstance(ref, int) or str(ref).isdigit():
            version = int(ref)
        else:
            aliases = self.aliases(name)
            if ref not in aliases:
                raise RegistryError(f"{name} has no alias {ref!r}; aliases: {aliases}")
            version = aliases[ref]
        if version not in known:
            raise RegistryError(f"{name} has no version {version}; versions: {known}")
        parts = self._dir(name, version)
        return ModelVersion(name, version, self.storage.uri(*parts),
                            self.storage.read_json(*parts, "metadata.json"))

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> None:
        """Point `alias` at `version`, recording the move."""
        self.get(name, version)
        self._update_aliases(name, lambda doc: _moved(doc, alias, version, reason))

    def rollback(self, name: str, alias: str = "champion") -> int:
        """Move `alias` back to the version it pointed at before its current one."""

        def back(doc: dict[str, Any]) -> dict[str, Any]:
            current = doc["aliases"].get(alias)
            previous = [h["version"] for h in doc["history"]
                        if h["alias"] == alias and h["version"] != current]
            if current is None or not previous:
                raise RegistryError(f"{name}:{alias} has no earlier version to roll back to")
            return _moved(doc, alias, previous[-1], reason="rollback")

        return self._update_aliases(name, back)["aliases"][alias]

    def _update_aliases(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
                        ) -> dict[str, Any]:
        return self.storage.update_json(change, {"aliases": {}, "history": []},
                                        "models", name, "aliases.json")

    def load(self, name: str, ref: str | int = "champion") -> tuple[Any, ModelVersion]:
        """The model of a version, ready to predict: rebuilt from its architecture and weights
        in eval mode, or loaded by the runtime its metadata names (an ONNX variant)."""
        import slipway.models  # noqa: F401 (registers the shipped architectures and runtimes)

        mv = self.get(name, ref)
        if "runtime" in mv.metadata:
            if mv.metadata["runtime"] not in RUNTIMES:
                raise RegistryError(f"{name} v{mv.version} needs runtime "
                                    f"{mv.metadata['runtime']!r}; known: {sorted(RUNTIMES)}")
            folder, _ = self.fetch(name, mv.version)
            return RUNTIMES[mv.metadata["runtime"]](folder, mv), mv
        if mv.metadata.get("format") == "folder":
            raise RegistryError(f"{name} v{mv.version} is a {mv.metadata['kind']} folder; "
                                "use Registry.fetch")

        arch = mv.metadata["architecture"]
        if arch["name"] not in ARCHITECTURES:
            raise RegistryError(f"{name} v{mv.version} needs architecture {arch['name']!r}, "
                                f"which is not imported; known: {sorted(ARCHITECTURES)}")
        model = ARCHITECTURES[arch["name"]](**arch["params"])
        weights = self.storage.read_bytes(*self._dir(name, mv.version), "model.safetensors")
        missing, unexpected = model.load_state_dict(load_safetensors(weights), strict=False)
        # Frozen pretrained parts (e.g. a text encoder) are loaded by the model, not stored.
        pretrained = tuple(getattr(model, "pretrained_prefixes", ()))
        missing = [k for k in missing if not (pretrained and k.startswith(pretrained))]
        if missing or unexpected:
            raise RegistryError(f"{name} v{mv.version}: weights do not fit {arch['name']}: "
                                f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval(), mv


def _moved(doc: dict[str, Any], alias: str, version: int, reason: str) -> dict[str, Any]:
    """`doc` (an aliases document) with `alias` moved to `version` and the move recorded."""
    doc["history"].append({"alias": alias, "version": version,
                           "previous": doc["aliases"].get(alias), "at": time.time(),
                           "reason": reason})
    doc["aliases"][alias] = version
    return doc

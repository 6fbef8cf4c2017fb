"""YAML configuration loaded into pydantic models, with `--set dotted.key=value` overrides.

Every job has one config model (a subclass of `JobConfig`). Unknown keys and wrong types fail at
start with a `ConfigError` naming the key and the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the fix."""


UtcDatetime = Annotated[datetime, AfterValidator(
    lambda moment: moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))]
"""A datetime in config; one written without a time zone (`2026-02-07`) is UTC."""


def _duration(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    import pandas as pd

    try:
        return pd.Timedelta(value).to_pytimedelta()
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a duration; write e.g. 30min, 1h or 2d") from exc


Duration = Annotated[timedelta, BeforeValidator(_duration)]
"""A duration in config: `30min`, `1h`, `2d` (or seconds as a number)."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class StorageConfig(StrictModel):
    """Where every job reads and writes: a local folder or an `s3://` / `gs://` URI."""

    root: str = "data"


class RayConfig(StrictModel):
    """How a job reaches Ray: `address` None starts a local Ray (or joins `RAY_ADDRESS`)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)


class TrackingConfig(StrictModel):
    """W&B settings. `mode` auto: online when WANDB_API_KEY is set, offline otherwise."""

    project: str = "slipway"
    entity: str | None = None
    mode: str = Field(default="auto", pattern="^(auto|online|offline|disabled)$")


class JobConfig(StrictModel):
    """Sections every job shares."""

    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()


C = TypeVar("C", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. storage.root=/tmp")
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `value` at `path` inside nested dicts, creating sections as needed."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; remove it or check its spelling"
    if error["type"] == "missing":
        return f"{key}: required key is missing; add it"
    return f"{key}: {error['msg']} (got {error.get('input')!r}); fix the value"


def validate_config(model: type[C], data: dict[str, Any], source: str) -> C:
    """Validate `data` into `model`, turning pydantic errors into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"invalid config {source}:\n  {lines}") from None


def merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`: mappings merge key by key; lists of mappings that all have a `name`
    (pipeline stages) merge item by item by name, new names appended; anything else replaces."""
    out = dict(base)
    for key, value in layer.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        elif _named(old) and _named(value):
            by_name = {item["name"]: item for item in value}
            out[key] = [merge(item, by_name.pop(item["name"], {})) for item in old]
            out[key] += list(by_name.values())
        else:
            out[key] = value
    return out


def _named(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, dict) and "name" in item for item in value)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing --config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections at top level")
    return loaded or {}


ConfigPaths = str | Path | Sequence[str | Path] | None
"""One YAML file, several layered in order (later files override earlier ones), or None."""


def load_config(model: type[C], paths: ConfigPaths, overrides: Sequence[str] = ()) -> C:
    """Load the YAML file(s) at `paths` (None: defaults only), each layered over the ones before
    it (`merge`), apply `--set` overrides and validate."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict[str, Any] = {}
    for path in paths:
        data = merge(data, _read_yaml(path))
    source = " + ".join(map(str, paths)) or "(defaults)"
    for item in overrides:
        apply_override(data, *parse_override(item))
    if overrides:
        source += " with --set " + " ".join(overrides)
    return validate_config(model, data, source)

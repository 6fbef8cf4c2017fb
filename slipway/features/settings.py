"""Feature store settings (Feast project, offline engine, online store), apart from Feast itself:
configs and the Serve app's arguments validate them without importing Feast (about 5 s of CPU in
every process that would)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slipway.config import StrictModel


class OnlineStoreSettings(StrictModel):
    """Where online features live: `sqlite` (under the storage root) or `redis`."""

    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string: str = Field(
        default="127.0.0.1:6379", description="Redis host:port[,password=...] (redis only)")


class FeatureStoreSettings(StrictModel):
    """Feast project, offline engine and online store."""

    project: str = Field(default="slipway", pattern=r"^[A-Za-z0-9_]+$")
    offline_store: Literal["file", "ray"] = "file"
    online_store: OnlineStoreSettings = OnlineStoreSettings()

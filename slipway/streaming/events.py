"""The outcome events on the stream, and their wire form.

A stream entry is flat text fields (Redis Streams and Kafka headers alike): `event_id` (chosen by
the producer, so a retried publish is counted once), `type`, `user_id`, `article_id` (either may be
empty), `value` (1, or seconds for dwell) and `ts_ms` (event time, Unix milliseconds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

EventType = Literal["impression", "click", "dwell", "conversion"]
COUNTED: tuple[EventType, ...] = ("impression", "click", "dwell")
"""The types the stream features count (conversions are for A/B analysis only)."""


class StreamEvent(BaseModel):
    """One outcome event as the consumer reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    type: EventType
    user_id: int | None = Field(default=None, ge=0)
    article_id: int | None = Field(default=None, ge=0)
    value: float = Field(default=1.0, ge=0, le=1e7, allow_inf_nan=False)
    ts_ms: int = Field(ge=0)


def encode(event: StreamEvent) -> dict[str, str]:
    """The entry fields of an event (empty text for a missing id)."""
    return {name: "" if value is None else str(value)
            for name, value in event.model_dump().items()}


def decode(fields: dict[str, str]) -> StreamEvent | str:
    """The event an entry holds, or why it is malformed (naming the fields)."""
    try:
        return StreamEvent.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                         for e in exc.errors())

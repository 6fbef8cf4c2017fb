"""Alerts: a log line and a Slack-compatible webhook POST when a check crosses its threshold.

Alerts are deduplicated across runs by a state file on the storage root: a check that stays over
its threshold alerts when it starts and again every `repeat_after`, not on every run; when it
comes back under, one "resolved" line is sent.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from datetime import datetime, timedelta

from pydantic import Field

from slipway.config import Duration, StrictModel
from slipway.storage import Storage

logger = logging.getLogger("slipway.monitor")


class AlertSettings(StrictModel):
    """Where alerts go and how often a persisting one repeats."""

    webhook_url: str | None = Field(default=None, description="or set it in `webhook_env`")
    webhook_env: str = "SLIPWAY_ALERT_WEBHOOK"
    repeat_after: Duration = timedelta(hours=24)
    timeout_s: float = Field(default=10.0, gt=0)
    fail_on_alert: bool = Field(default=False,
                                description="exit non-zero when a check is over its threshold")

    def url(self) -> str | None:
        """The webhook URL: the setting, else the environment variable."""
        return self.webhook_url or os.environ.get(self.webhook_env) or None


def plan(active: dict[str, str], state: dict[str, dict], now: datetime,
         repeat_after: timedelta) -> tuple[dict[str, str], list[str], dict[str, dict]]:
    """Which active checks to alert on now, which ones resolved, and the new state."""
    send, new_state = {}, {}
    for key, text in active.items():
        previous = state.get(key)
        if previous is None or now - datetime.fromisoformat(previous["sent"]) >= repeat_after:
            send[key] = text
            new_state[key] = {"since": previous["since"] if previous else now.isoformat(),
                              "sent": now.isoformat()}
        else:
            new_state[key] = previous
    resolved = sorted(set(state) - set(active))
    return send, resolved, new_state


def slack_payload(monitor: str, send: dict[str, str], resolved: list[str], report: str) -> dict:
    """A Slack incoming-webhook message (`text` plus blocks)."""
    lines = [f"*{monitor}*: {len(send)} check(s) over threshold"] if send else []
    lines += [f"• {text}" for text in send.values()]
    if resolved:
        lines.append(f"*{monitor}*: resolved: {', '.join(resolved)}")
    lines.append(f"report: {report}")
    text = "\n".join(lines)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                    "text": text}}]}


def post(url: str, payload: dict, timeout_s: float) -> None:
    """POST JSON to the webhook; raise on a non-2xx answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (config)
        if not 200 <= response.status < 300:
            raise OSError(f"webhook answered {response.status}")


def notify(monitor: str, active: dict[str, str], storage: Storage, settings: AlertSettings,
           report: str, now: datetime) -> dict:
    """Log and send what `plan` says; keep the state. Returns what was sent and resolved."""
    path = ("monitoring", monitor, "alert_state.json")
    state = storage.read_json(*path) if storage.exists(*path) else {}
    send, resolved, new_state = plan(active, state, now, settings.repeat_after)
    for key, text in send.items():
        logger.warning("ALERT %s %s: %s", monitor, key, text)
    for key in resolved:
        logger.warning("RESOLVED %s %s", monitor, key)
    delivered = None
    url = settings.url()
    if url and (send or resolved):
        try:
            post(url, slack_payload(monitor, send, resolved, report), settings.timeout_s)
            delivered = True
        except OSError as exc:  # keep the old state so the next run tries again
            logger.error("alert webhook failed: %s", exc)
            delivered = False
            new_state = state
    storage.write_json(new_state, *path)
    return {"sent": sorted(send), "resolved": resolved, "delivered": delivered}

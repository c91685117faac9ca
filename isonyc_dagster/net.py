"""HTTP helpers shared by the geodata readers and the model clients: how long a server asks us to wait."""

from __future__ import annotations

import email.utils
import time
from typing import Any


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def google_retry_delay(body: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("7s", "0.5s") from a Google API error body, if present."""
    try:
        details = body["error"].get("details") or []
    except (TypeError, KeyError, AttributeError):
        return None
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None

"""When to send the next request: backoff with jitter, Retry-After, and a requests-per-minute cap.

Kept apart from the HTTP code so the policies are plain functions and one small class.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass

# A server asking for longer than this is treated as asking for this long (then retried as usual).
MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry timeouts, 429 and 5xx."""

    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Exponential (base * 2**attempt, capped) with "equal jitter" (a random half of it) so many
        workers that failed together do not retry together. A server's Retry-After is a floor.
        """
        rng = rng or random
        cap = min(self.backoff_max, self.backoff_base * (2**attempt))
        backoff = cap / 2 + rng.uniform(0, cap / 2)
        if retry_after is not None:
            return max(min(retry_after, MAX_RETRY_AFTER_S), backoff)
        return backoff


def parse_retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
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
    return max(0.0, when.timestamp() - time.time())


class Pacer:
    """Spaces request starts ``60/rpm`` seconds apart and holds everyone during a server-requested pause."""

    def __init__(self, rpm: float | None = None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        await asyncio.sleep(max(0.0, slot - now))
        while (left := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def pause(self, seconds: float) -> None:
        """Nobody starts a request for ``seconds`` (a 429 with Retry-After applies to the whole client)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

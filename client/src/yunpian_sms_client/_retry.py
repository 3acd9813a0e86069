"""When the clients retry a failed call: after UNAVAILABLE only, with jittered backoff, in time."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Final

from ._errors import SmsError

# A retry that would start with less time than this left before the deadline can only turn an
# informative UNAVAILABLE into a bare DEADLINE_EXCEEDED, so it is not made.
_MIN_ATTEMPT_TIME_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a client retries calls that failed with UNAVAILABLE.

    Only UNAVAILABLE is retried (the service did nothing and says so), and the calls that send an
    SMS (`send_code`, `start_verification`) only when they have a `request_id`, since then the
    service answers a repeat from its idempotency record instead of sending a second SMS. Every
    attempt shares the call's one deadline: each gets the time that remains, and no retry starts
    that could not finish before it.

    Attributes:
        max_attempts: Attempts in all, the first included; 1 disables retrying.
        initial_backoff_s: Upper bound of the first wait, in seconds.
        max_backoff_s: Cap on the upper bound of any wait, in seconds.
        backoff_multiplier: Growth of the upper bound from one wait to the next.

    Each wait is drawn uniformly between 0 and its upper bound ("full jitter"), so that many
    clients failing together do not retry together; a longer `RetryInfo` delay sent by the
    server takes precedence.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        """Rejects settings that cannot describe a retry schedule."""
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        for name in ("initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if not (math.isfinite(self.backoff_multiplier) and self.backoff_multiplier >= 1):
            raise ValueError(
                f"backoff_multiplier must be a finite number >= 1, not {self.backoff_multiplier}"
            )

    def backoff_bound(self, retry: int) -> float:
        """The upper bound, in seconds, of the wait before retry number `retry` (1-based)."""
        # Capped before exponentiating so a large max_attempts cannot overflow a float.
        exponent = min(retry - 1, 64)
        return min(self.max_backoff_s, self.initial_backoff_s * self.backoff_multiplier**exponent)


DEFAULT_RETRY_POLICY: Final = RetryPolicy()


class CallAttempts:
    """The attempts of one call: its deadline, and whether and when to try again."""

    def __init__(self, policy: RetryPolicy | None, timeout: float, *, may_retry: bool) -> None:
        """Starts the clock of a call that must end within `timeout` seconds."""
        self._policy = policy if may_retry else None
        self._deadline = time.monotonic() + timeout
        self._attempts = 1

    def remaining(self) -> float:
        """Seconds left before the call's deadline: the timeout of the next attempt."""
        return max(self._deadline - time.monotonic(), 0.0)

    def delay_before_retry(self, error: SmsError) -> float | None:
        """Seconds to wait before retrying after `error`, or None to give up and raise it."""
        policy = self._policy
        if policy is None or not error.retryable or self._attempts >= policy.max_attempts:
            return None
        bound = policy.backoff_bound(self._attempts)
        delay = random.uniform(0.0, bound)  # noqa: S311 - jitter, not a secret
        if error.retry_delay is not None:
            delay = max(delay, error.retry_delay)
        if self.remaining() - delay < _MIN_ATTEMPT_TIME_S:
            return None
        self._attempts += 1
        return delay

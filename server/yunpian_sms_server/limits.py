"""Rate limits as values: "COUNT/PERIOD" limits and the windows a send counts in.

The config reads limits with `parse_limit`; the rate limiter applies them as `Window`s, one per
limit and subject (a phone number, a caller, everyone); the stores count sends in them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple

_LIMIT = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*")
_PERIOD_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Bounds of a rate limit "COUNT/PERIOD": beyond them a limit is a typo, and the stores' clocks
# and counters (Redis takes periods in milliseconds) would overflow.
MAX_LIMIT_COUNT: Final = 1_000_000_000
MAX_LIMIT_PERIOD_DAYS: Final = 366
MAX_LIMIT_PERIOD_S: Final = MAX_LIMIT_PERIOD_DAYS * _PERIOD_SECONDS["d"]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` sends per `period_s` seconds."""

    count: int
    period_s: float
    text: str  # as configured, "5/1h": names the limit in errors


class Window(NamedTuple):
    """One rate limit applied to one subject: `scope` names it in errors ("phone", "caller").

    A named tuple: a SendCode makes one per per-phone limit, so it must be cheap to make.
    """

    scope: str
    subject: str
    limit: Limit

    @property
    def subject_key(self) -> str:
        """What the window counts: every window of one subject shares its log."""
        return f"{self.scope}:{self.subject}"


def _at_most(digits: str, ceiling: int) -> int:
    """The decimal number, or ceiling + 1 when it is larger (however many digits it has)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(ceiling)) else ceiling + 1


def parse_limit(text: str) -> Limit:
    """Parses "COUNT/PERIOD" ("1/60s", "5/1h", "10/1d", "2/m"); raises ValueError when malformed
    or out of bounds."""
    match = _LIMIT.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not COUNT/PERIOD with PERIOD in s, m, h or d, e.g. '5/1h'")
    count_digits, period_digits, unit = match.groups()
    count = _at_most(count_digits, MAX_LIMIT_COUNT)
    if not 1 <= count <= MAX_LIMIT_COUNT:
        raise ValueError(f"{text.strip()!r}: COUNT must be 1 to {MAX_LIMIT_COUNT}")
    unit_s = _PERIOD_SECONDS[unit]
    period = _at_most(period_digits or "1", MAX_LIMIT_PERIOD_S // unit_s) * unit_s
    if not 0 < period <= MAX_LIMIT_PERIOD_S:
        raise ValueError(
            f"{text.strip()!r}: PERIOD must be more than 0 and at most {MAX_LIMIT_PERIOD_DAYS} days"
        )
    return Limit(count=count, period_s=float(period), text=text.strip())

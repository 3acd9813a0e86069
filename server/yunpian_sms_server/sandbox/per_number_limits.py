"""YunPian's default per-number limits (anti-bombing, anti-harassment) and their send history."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# Numbers and (number, content) pairs whose limit history is kept; the least recent go first.
MAX_TRACKED_KEYS: Final = 100_000


@dataclass(frozen=True)
class Limit:
    """At most `count` accepted messages per `window_s`, per number or per (number, content)."""

    code: int
    count: int
    window_s: float
    same_content: bool


# In the order they are checked: the same-content rules first since they are the more specific
# reason for a refusal. The anti-bombing ones (33, 22, 17) count every accepted message to the
# number, whatever its template.
PER_NUMBER_LIMITS: Final = (
    Limit(code=8, count=1, window_s=30.0, same_content=True),
    Limit(code=9, count=3, window_s=300.0, same_content=True),
    Limit(code=33, count=1, window_s=30.0, same_content=False),
    Limit(code=22, count=3, window_s=3600.0, same_content=False),
    Limit(code=17, count=10, window_s=86400.0, same_content=False),
)


class PerNumberLimits:
    """The history of accepted messages that PER_NUMBER_LIMITS judge a new one by.

    Only accepted messages count: the caller records a message once it is accepted.
    """

    def __init__(self) -> None:
        self._by_number = _SendHistory(x for x in PER_NUMBER_LIMITS if not x.same_content)
        self._by_content = _SendHistory(x for x in PER_NUMBER_LIMITS if x.same_content)

    def refusal(self, mobile: str, content: str, now: float) -> int | None:
        """The code of the first limit a message to `mobile` at `now` exceeds; None if none."""
        for limit in PER_NUMBER_LIMITS:
            if limit.same_content:
                refused = self._by_content.refused((mobile, content), limit, now)
            else:
                refused = self._by_number.refused(mobile, limit, now)
            if refused:
                return limit.code
        return None

    def record(self, mobile: str, content: str, now: float) -> None:
        """Counts an accepted message to `mobile` at `now`."""
        self._by_number.record(mobile, now)
        self._by_content.record((mobile, content), now)

    def clear(self) -> None:
        """Forgets every message counted so far."""
        self._by_number.clear()
        self._by_content.clear()


class _SendHistory:
    """The recent accepted sends per key, enough to judge every limit of one kind.

    Only the last `depth` timestamps per key are kept (a rule "at most n per window" needs only
    the n-th most recent one); keys are kept in order of last use so expired ones are pruned from
    the front in O(1) each.
    """

    def __init__(self, limits: Iterable[Limit]) -> None:
        limits = tuple(limits)
        self._depth = max(limit.count for limit in limits)
        self._horizon_s = max(limit.window_s for limit in limits)
        self._times: OrderedDict[object, deque[float]] = OrderedDict()

    def refused(self, key: object, limit: Limit, now: float) -> bool:
        times = self._times.get(key)
        return (
            times is not None
            and len(times) >= limit.count
            and now - times[-limit.count] < limit.window_s
        )

    def record(self, key: object, now: float) -> None:
        times = self._times.pop(key, None) or deque(maxlen=self._depth)
        times.append(now)
        self._times[key] = times
        while self._times:
            oldest = next(iter(self._times.values()))
            if len(self._times) <= MAX_TRACKED_KEYS and now - oldest[-1] < self._horizon_s:
                break
            self._times.popitem(last=False)

    def clear(self) -> None:
        self._times.clear()

"""Delivery reports (状态报告): their settings, the FAIL rule, and the reports waiting to go out.

Every accepted message gets one report, decided when the message is accepted: available
`delay_seconds` later, SUCCESS or FAIL by the rule of ReportSettings. A message sent with a
`callback_url` has its report pushed there (report_push); any other waits to be pulled
(`pull_status.json`), once. This module holds the state; the network is elsewhere.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Final, Literal, cast

from yunpian_sms_server.sandbox.json_input import (
    JsonObject,
    SandboxInputError,
    is_number,
    json_object,
    reject_unknown_keys,
)

ReportStatus = Literal["SUCCESS", "FAIL"]

DEFAULT_DELAY_S: Final = 0.5
DEFAULT_SUCCESS_CODE: Final = "DELIVRD"
DEFAULT_FAILURE_CODES: Final = (("UNDELIV", "用户关机"),)
DEFAULT_RETRY_INTERVAL_S: Final = 1.0
DEFAULT_PUSH_TIMEOUT_S: Final = 5.0
# YunPian keeps an unread report 72 h; the sandbox forgets it then too (counted as expired).
RETENTION_S: Final = 72 * 3600.0
MAX_DELAY_S: Final = RETENTION_S
MAX_RETRY_INTERVAL_S: Final = 600.0
MAX_PUSH_TIMEOUT_S: Final = 60.0
# A failed push is retried this many times (YunPian: 3, five minutes apart), then given up.
PUSH_RETRIES: Final = 3
# Reports in one push (YunPian: up to 100).
MAX_PUSH_BATCH: Final = 100
# Reports waiting at once (pull and push); beyond it the earliest due go (counted as dropped).
MAX_PENDING_REPORTS: Final = 100_000
# The sizes of the last pulls that the stats list.
MAX_LISTED_PULLS: Final = 1_000
# How finely failure_share is read: the nearest fraction with a denominator up to this.
SHARE_DENOMINATOR: Final = 10_000
MAX_FAIL_MOBILES: Final = 10_000
MAX_FAILURE_CODES: Final = 100
MAX_CODE_CHARS: Final = 200
# YunPian's China time (UTC+8, no daylight saving) of `user_receive_time`.
CHINA_UTC_OFFSET_S: Final = 8 * 3600


@dataclass(frozen=True)
class ReportSettings:
    """How the sandbox reports on the messages it accepts from now on.

    * `delay_seconds` (default 0.5, 0 allowed): a report becomes available that long after its
      message was accepted; `user_receive_time` is that moment in China time.
    * FAIL rule: the report of a message to one of `fail_mobiles` (as recorded: 11 digits for
      the mainland, E.164 otherwise) fails; so does that of the k-th message accepted since these
      settings (or a reset) when ⌊k·`failure_share`⌋ > ⌊(k−1)·`failure_share`⌋. Exactly
      ⌊n·share⌋ of the first n fail, evenly spread: 0.5 fails the 2nd, 4th, …; 0.25 the 4th,
      8th, …; 1 every one; 0 (the default) none. The share is read as the nearest fraction with
      a denominator up to 10 000 (1/3 fails the 3rd, 6th, …).
    * A SUCCESS has `error_msg` = `success_code` (default "DELIVRD") and `error_detail` "". The
      j-th FAIL takes the j-th pair of `failure_codes` (error_msg, error_detail), cycling; the
      default is one pair, ("UNDELIV", "用户关机").
    * Pushes: a failed push is retried `PUSH_RETRIES` (3) times, `retry_interval_seconds` apart
      (default 1; YunPian waits 5 minutes); each POST may take `push_timeout_seconds` (default 5).

    A report is decided when its message is accepted: new settings apply to later messages.
    """

    delay_seconds: float = DEFAULT_DELAY_S
    failure_share: float = 0.0
    fail_mobiles: tuple[str, ...] = ()
    success_code: str = DEFAULT_SUCCESS_CODE
    failure_codes: tuple[tuple[str, str], ...] = DEFAULT_FAILURE_CODES
    retry_interval_seconds: float = DEFAULT_RETRY_INTERVAL_S
    push_timeout_seconds: float = DEFAULT_PUSH_TIMEOUT_S

    def __post_init__(self) -> None:
        # Lists are welcome from Python callers; kept as tuples so the settings stay frozen.
        object.__setattr__(self, "fail_mobiles", _strings(self.fail_mobiles, "fail_mobiles"))
        object.__setattr__(self, "failure_codes", _code_pairs(self.failure_codes))
        _require_number(self.delay_seconds, "delay_seconds", 0.0, MAX_DELAY_S)
        _require_number(self.failure_share, "failure_share", 0.0, 1.0)
        _require_number(
            self.retry_interval_seconds, "retry_interval_seconds", 0.0, MAX_RETRY_INTERVAL_S
        )
        _require_number(self.push_timeout_seconds, "push_timeout_seconds", 0.0, MAX_PUSH_TIMEOUT_S)
        if self.push_timeout_seconds == 0:
            raise SandboxInputError("push_timeout_seconds must be above 0")
        if len(self.fail_mobiles) > MAX_FAIL_MOBILES:
            raise SandboxInputError(f"fail_mobiles may list at most {MAX_FAIL_MOBILES} numbers")
        if not isinstance(self.success_code, str) or len(self.success_code) > MAX_CODE_CHARS:
            raise SandboxInputError(
                f"success_code must be a string of at most {MAX_CODE_CHARS} characters"
            )

    @property
    def share(self) -> Fraction:
        """failure_share as the fraction the FAIL rule uses."""
        return Fraction(self.failure_share).limit_denominator(SHARE_DENOMINATOR)

    def to_json(self) -> JsonObject:
        """The settings as `GET/POST /sandbox/reports` write them."""
        return {
            "delay_seconds": self.delay_seconds,
            "failure_share": self.failure_share,
            "fail_mobiles": list(self.fail_mobiles),
            "success_code": self.success_code,
            "failure_codes": [
                {"error_msg": msg, "error_detail": detail} for msg, detail in self.failure_codes
            ],
            "retry_interval_seconds": self.retry_interval_seconds,
            "push_timeout_seconds": self.push_timeout_seconds,
        }

    @classmethod
    def from_json(cls, data: object) -> ReportSettings:
        """Settings from their JSON object; a key left out takes its default."""
        obj = json_object(data, "report settings")
        reject_unknown_keys(obj, set(cls().to_json()))
        codes = obj.get("failure_codes")
        return cls(
            delay_seconds=_json_number(obj, "delay_seconds", DEFAULT_DELAY_S),
            failure_share=_json_number(obj, "failure_share", 0.0),
            fail_mobiles=_strings(obj.get("fail_mobiles", ()), "fail_mobiles"),
            success_code=cast(str, obj.get("success_code", DEFAULT_SUCCESS_CODE)),
            failure_codes=DEFAULT_FAILURE_CODES if codes is None else _code_objects(codes),
            retry_interval_seconds=_json_number(
                obj, "retry_interval_seconds", DEFAULT_RETRY_INTERVAL_S
            ),
            push_timeout_seconds=_json_number(obj, "push_timeout_seconds", DEFAULT_PUSH_TIMEOUT_S),
        )


@dataclass(frozen=True)
class DeliveryReport:
    """One message's report, with when it becomes available and where it goes."""

    sid: int
    uid: str | None
    mobile: str  # as YunPian reports it: +86 dropped, other numbers in E.164
    report_status: ReportStatus
    error_msg: str
    error_detail: str
    available_at: float  # the sandbox clock's time when it may be pulled or pushed
    callback_url: str | None  # pushed there when set; pulled otherwise

    @property
    def user_receive_time(self) -> str:
        """`available_at` as YunPian writes it: "yyyy-MM-dd HH:mm:ss" in China time."""
        return time.strftime(
            "%Y-%m-%d %H:%M:%S", time.gmtime(self.available_at + CHINA_UTC_OFFSET_S)
        )

    def to_wire(self) -> JsonObject:
        """The report as YunPian sends it (pull and push): sid an exact JSON integer."""
        return {
            "sid": self.sid,
            "uid": self.uid,
            "user_receive_time": self.user_receive_time,
            "error_msg": self.error_msg,
            "mobile": self.mobile,
            "report_status": self.report_status,
            "error_detail": self.error_detail,
        }

    def to_json(self) -> JsonObject:
        """The report as `GET /sandbox/reports` lists it: the wire fields, the sid a decimal
        string (as `/sandbox/messages` writes it), and where and when it goes."""
        return {
            **self.to_wire(),
            "sid": str(self.sid),
            "available_at": self.available_at,
            "callback_url": self.callback_url,
        }


@dataclass
class ReportStats:
    """What the reports did since the sandbox started or was reset (the keeper counts in one;
    `stats()` hands out a copy).

    `pulls` successful pull_status requests handed out `pulled` reports in all, `pull_sizes`
    of them per request (the last MAX_LISTED_PULLS, oldest first). A push is one POST of up to
    100 reports: `push_attempts` POSTs were made, `push_successes` answered SUCCESS (delivering
    `pushed` reports), `push_failures` did not, and `push_given_up` pushes failed their last
    retry (their `given_up_reports` are gone). `expired` reports went unread for 72 h and
    `dropped` ones were the oldest when MAX_PENDING_REPORTS were waiting.
    """

    pulls: int = 0
    pulled: int = 0
    pull_sizes: tuple[int, ...] = ()
    push_attempts: int = 0
    push_successes: int = 0
    push_failures: int = 0
    push_given_up: int = 0
    pushed: int = 0
    given_up_reports: int = 0
    expired: int = 0
    dropped: int = 0

    def to_json(self) -> JsonObject:
        return {**asdict(self), "pull_sizes": list(self.pull_sizes)}


@dataclass(eq=False)
class PushBatch:
    """Up to MAX_PUSH_BATCH due reports for one callback URL, pushed (and retried) together."""

    url: str
    reports: tuple[DeliveryReport, ...]
    attempts: int = 0
    next_attempt_at: float = 0.0
    in_flight: bool = False


# Heap entries: (available_at, sid, tiebreak, report); the tiebreak keeps equal sids apart.
_Entry = tuple[float, int, int, DeliveryReport]


class DeliveryReports:
    """The reports of an account not yet handed out: to pull, to push, being pushed.

    `on_change` (set by the push task) is called when there is new push work to look at.
    """

    def __init__(self, settings: ReportSettings | None = None) -> None:
        self._initial = settings or ReportSettings()
        self.settings = self._initial
        self.on_change: Callable[[], None] | None = None
        self._to_pull: list[_Entry] = []
        self._to_push: list[_Entry] = []
        self._batches: list[PushBatch] = []
        self._counters = ReportStats()
        self._pull_sizes: deque[int] = deque(maxlen=MAX_LISTED_PULLS)
        self._accepted = 0  # messages accepted under the current settings
        self._failed = 0  # FAIL reports decided under the current settings
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return len(self._to_pull) + len(self._to_push) + sum(len(b.reports) for b in self._batches)

    def configure(self, settings: ReportSettings) -> None:
        """Takes new settings for messages accepted from now on; the FAIL rule counts afresh."""
        self.settings = settings
        self._accepted = 0
        self._failed = 0
        self._changed()

    def schedule(
        self,
        sid: int,
        mobile: str,
        accepted_at: float,
        uid: str | None = None,
        callback_url: str | None = None,
    ) -> DeliveryReport:
        """Decides the report of a message accepted at `accepted_at` and queues it."""
        settings = self.settings
        self._accepted += 1
        share = settings.share
        fails = mobile in settings.fail_mobiles or (
            math.floor(self._accepted * share) > math.floor((self._accepted - 1) * share)
        )
        if fails:
            error_msg, error_detail = settings.failure_codes[
                self._failed % len(settings.failure_codes)
            ]
            self._failed += 1
        else:
            error_msg, error_detail = settings.success_code, ""
        report = DeliveryReport(
            sid=sid,
            uid=uid,
            mobile=mobile.removeprefix("+86"),
            report_status="FAIL" if fails else "SUCCESS",
            error_msg=error_msg,
            error_detail=error_detail,
            available_at=accepted_at + settings.delay_seconds,
            callback_url=callback_url,
        )
        entry = (report.available_at, sid, next(self._tiebreak), report)
        heapq.heappush(self._to_pull if callback_url is None else self._to_push, entry)
        if len(self) > MAX_PENDING_REPORTS:
            heapq.heappop(self._to_pull or self._to_push)
            self._counters.dropped += 1
        if callback_url is not None:
            self._changed()
        return report

    # -- pull -----------------------------------------------------------------------------

    def pull(self, page_size: int, now: float) -> list[DeliveryReport]:
        """Hands out (and forgets) up to page_size available reports, oldest first."""
        self._expire(now)
        taken: list[DeliveryReport] = []
        while self._to_pull and len(taken) < page_size and self._to_pull[0][0] <= now:
            taken.append(heapq.heappop(self._to_pull)[3])
        counters = self._counters
        counters.pulls += 1
        counters.pulled += len(taken)
        self._pull_sizes.append(len(taken))
        return taken

    def _expire(self, now: float) -> None:
        while self._to_pull and self._to_pull[0][0] + RETENTION_S <= now:
            heapq.heappop(self._to_pull)
            self._counters.expired += 1

    # -- push -----------------------------------------------------------------------------

    def due_pushes(self, now: float) -> list[PushBatch]:
        """The pushes to make now, each marked in flight and its attempt counted.

        Reports that became available are first gathered per callback URL, oldest first, into
        batches of up to MAX_PUSH_BATCH; then every batch not in flight whose (next) attempt is
        due is handed out.
        """
        by_url: dict[str, list[DeliveryReport]] = {}
        while self._to_push and self._to_push[0][0] <= now:
            report = heapq.heappop(self._to_push)[3]
            by_url.setdefault(cast(str, report.callback_url), []).append(report)
        for url, reports in by_url.items():
            for start in range(0, len(reports), MAX_PUSH_BATCH):
                chunk = tuple(reports[start : start + MAX_PUSH_BATCH])
                self._batches.append(PushBatch(url, chunk, next_attempt_at=now))
        due = [b for b in self._batches if not b.in_flight and b.next_attempt_at <= now]
        for batch in due:
            batch.in_flight = True
            batch.attempts += 1
            self._counters.push_attempts += 1
        return due

    def next_push_at(self) -> float | None:
        """When the next push falls due by the clock; None when no push waits."""
        times = [b.next_attempt_at for b in self._batches if not b.in_flight]
        if self._to_push:
            times.append(self._to_push[0][0])
        return min(times, default=None)

    def push_done(self, batch: PushBatch, succeeded: bool, now: float) -> None:
        """Records how a push went: delivered, to be retried, or given up after its retries.

        A batch the account no longer holds (a reset while it was in flight) is ignored.
        """
        if batch not in self._batches:
            return
        batch.in_flight = False
        counters = self._counters
        if succeeded:
            counters.push_successes += 1
            counters.pushed += len(batch.reports)
            self._batches.remove(batch)
        else:
            counters.push_failures += 1
            if batch.attempts > PUSH_RETRIES:
                counters.push_given_up += 1
                counters.given_up_reports += len(batch.reports)
                self._batches.remove(batch)
            else:
                batch.next_attempt_at = now + self.settings.retry_interval_seconds
        self._changed()

    def push_abandoned(self, batch: PushBatch) -> None:
        """A push stopped halfway (the sandbox closing): the batch waits for a next attempt."""
        if batch in self._batches:
            batch.in_flight = False
            batch.attempts -= 1

    # -- listing and reset ----------------------------------------------------------------

    def pending(self, now: float) -> list[DeliveryReport]:
        """Every report not yet handed out or pushed, by when it is available, then sid."""
        self._expire(now)
        reports = [entry[3] for entry in itertools.chain(self._to_pull, self._to_push)]
        reports.extend(report for batch in self._batches for report in batch.reports)
        return sorted(reports, key=lambda report: (report.available_at, report.sid))

    def count(self, now: float) -> int:
        """How many reports `pending` would list, without listing them."""
        self._expire(now)
        return len(self)

    def stats(self) -> ReportStats:
        """A snapshot of the counts."""
        return replace(self._counters, pull_sizes=tuple(self._pull_sizes))

    def reset(self) -> None:
        """Forgets every report and count and restores the initial settings."""
        self._to_pull.clear()
        self._to_push.clear()
        self._batches.clear()
        self._counters = ReportStats()
        self._pull_sizes.clear()
        self.configure(self._initial)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _json_number(obj: JsonObject, name: str, default: float) -> float:
    value = obj.get(name, default)
    if not is_number(value):
        raise SandboxInputError(f"{name} must be a number")
    return float(cast(float, value))


def _require_number(value: object, name: str, low: float, high: float) -> None:
    if not is_number(value) or not low <= cast(float, value) <= high:
        raise SandboxInputError(f"{name} must be a number from {low:g} to {high:g}")


def _strings(values: object, name: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        raise SandboxInputError(f"{name} must be a list of strings")
    strings = tuple(values)
    if not all(isinstance(value, str) and value for value in strings):
        raise SandboxInputError(f"{name} must be a list of non-empty strings")
    return cast(tuple[str, ...], strings)


def _code_pairs(pairs: object) -> tuple[tuple[str, str], ...]:
    """failure_codes as given in Python: (error_msg, error_detail) pairs."""
    if not isinstance(pairs, list | tuple):
        raise SandboxInputError("failure_codes must be a list of (error_msg, error_detail)")
    checked = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise SandboxInputError("failure_codes must be a list of (error_msg, error_detail)")
        error_msg, error_detail = pair
        for name, value in (("error_msg", error_msg), ("error_detail", error_detail)):
            if not isinstance(value, str) or len(value) > MAX_CODE_CHARS:
                raise SandboxInputError(
                    f"a failure code's {name} must be a string of at most {MAX_CODE_CHARS} "
                    "characters"
                )
        checked.append((error_msg, error_detail))
    if not 1 <= len(checked) <= MAX_FAILURE_CODES:
        raise SandboxInputError(f"failure_codes must list 1 to {MAX_FAILURE_CODES} codes")
    return tuple(checked)


def _code_objects(codes: object) -> tuple[tuple[str, str], ...]:
    """failure_codes as the control API takes them: `{"error_msg", "error_detail"}` objects."""
    if not isinstance(codes, list):
        raise SandboxInputError("failure_codes must be a list of objects")
    pairs = []
    for code in codes:
        obj = json_object(code, "failure code")
        reject_unknown_keys(obj, {"error_msg", "error_detail"})
        if "error_msg" not in obj:
            raise SandboxInputError("a failure code needs error_msg")
        pairs.append((obj["error_msg"], obj.get("error_detail", "")))
    return _code_pairs(pairs)

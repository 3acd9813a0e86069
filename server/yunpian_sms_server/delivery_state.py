"""Delivery reports as values: what became of a sent SMS, and YunPian's report format.

YunPian reports each accepted message once, later, by pull (a JSON array) or push (a form field
`sms_status` holding the URL-encoded JSON array, which some stacks encode twice). A report says
SUCCESS or FAIL with the carrier's code; a message with no report within the time YunPian keeps
them is UNKNOWN.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote_plus

# YunPian writes user_receive_time in China time, without a zone.
CHINA_TIME: Final = timezone(timedelta(hours=8))
RECEIVE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
# Reports in one pull or push, at most (YunPian's page and batch size).
MAX_REPORTS: Final = 100
# A sent message is kept this many report waits: past the first it is UNKNOWN, and the caller
# can still ask and be told so.
KEPT_REPORT_WAITS: Final = 2
# A report of a message the store does not know waits this long for the message to be recorded
# (YunPian can report before the replica that sent it has recorded it), then is dropped.
EARLY_REPORT_S: Final = 600.0
# At most this many such reports wait in a server's memory (a shared account reports other
# senders' messages too): past it, the newest are dropped.
MAX_EARLY_REPORTS: Final = 100_000
# Longest carrier code and detail kept: YunPian's are a few dozen characters.
MAX_CARRIER_TEXT: Final = 256
_REPORT_STATUSES: Final = {"SUCCESS": "DELIVERED", "FAIL": "FAILED"}


class DeliveryState(StrEnum):
    """Whether an SMS reached the phone (the proto's DeliveryState without its prefix)."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One report of YunPian's: which message, how it ended, and when the phone received it."""

    message_id: str  # the sid, decimal
    state: DeliveryState  # DELIVERED or FAILED
    carrier_code: str  # error_msg, as written: "DELIVRD", "DB:0103"
    carrier_detail: str  # error_detail, as written
    received_at: float | None  # user_receive_time, seconds since the epoch


@dataclass(slots=True)
class SentMessage:
    """A message the service sent, as kept for its delivery status (only its caller sees it)."""

    message_id: str
    caller: str
    sent_at: float  # seconds since the epoch
    state: DeliveryState = DeliveryState.PENDING
    carrier_code: str = ""
    carrier_detail: str = ""
    received_at: float | None = None

    def as_seen_at(self, now: float, report_wait_s: float) -> SentMessage:
        """The message at `now`: pending past the report wait is unknown."""
        if self.state is DeliveryState.PENDING and now - self.sent_at > report_wait_s:
            self.state = DeliveryState.UNKNOWN
        return self


class ReportFormatError(ValueError):
    """A body that is not YunPian's report format; the message says what is wrong."""


def parse_reports(data: Any) -> list[DeliveryReport]:
    """Reads a JSON array of YunPian reports; ReportFormatError when it is not one."""
    if not isinstance(data, list):
        raise ReportFormatError("the reports are not a JSON array")
    if len(data) > MAX_REPORTS:
        raise ReportFormatError(f"more than {MAX_REPORTS} reports in one batch")
    return [_report(item, index) for index, item in enumerate(data)]


def _report(item: Any, index: int) -> DeliveryReport:
    if not isinstance(item, dict):
        raise ReportFormatError(f"report {index} is not a JSON object")
    sid, status = item.get("sid"), item.get("report_status")
    if isinstance(sid, bool) or not isinstance(sid, int | str) or not str(sid).isdigit():
        raise ReportFormatError(f"report {index} has no sid")
    if status not in _REPORT_STATUSES:
        raise ReportFormatError(f"report {index}: report_status is not SUCCESS or FAIL")
    code, detail = item.get("error_msg") or "", item.get("error_detail") or ""
    if not isinstance(code, str) or not isinstance(detail, str):
        raise ReportFormatError(f"report {index}: error_msg and error_detail must be text")
    return DeliveryReport(
        message_id=str(sid),
        state=DeliveryState(_REPORT_STATUSES[status]),
        carrier_code=code[:MAX_CARRIER_TEXT],
        carrier_detail=detail[:MAX_CARRIER_TEXT],
        received_at=_receive_time(item.get("user_receive_time")),
    )


def _receive_time(value: Any) -> float | None:
    """user_receive_time as seconds since the epoch; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.strptime(value, RECEIVE_TIME_FORMAT)
    except ValueError:
        return None
    return moment.replace(tzinfo=CHINA_TIME).timestamp()


def decode_pushed_reports(sms_status: str) -> list[DeliveryReport]:
    """The reports of a push's `sms_status` field (already form-decoded once by the web
    framework): JSON, or JSON URL-encoded once more, as some senders do."""
    for candidate in (sms_status, unquote_plus(sms_status)):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        return parse_reports(data)
    raise ReportFormatError("sms_status is not a JSON array, even URL-decoded once more")


def report_latencies(messages: Sequence[SentMessage]) -> list[float]:
    """Seconds from send to receipt of the messages that were received."""
    return [
        message.received_at - message.sent_at
        for message in messages
        if message.received_at is not None
    ]

"""The fake YunPian account: its API key, templates, accepted messages, their delivery reports,
limit history and faults."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from yunpian_sms_server.sandbox.delivery_reports import (
    DeliveryReport,
    DeliveryReports,
    ReportSettings,
    ReportStats,
)
from yunpian_sms_server.sandbox.faults import Fault, PendingFaults
from yunpian_sms_server.sandbox.json_input import JsonObject, SandboxInputError
from yunpian_sms_server.sandbox.per_number_limits import PerNumberLimits
from yunpian_sms_server.sandbox.templates import (
    MAX_TEMPLATES,
    SandboxTemplate,
    require_check_status,
)

SANDBOX_API_KEY: Final = "0123456789abcdef0123456789abcdef"
# The first sid handed out: above 2**53, where a float (JavaScript number, JSON parsed as double)
# loses precision, so a caller that does not keep sids exact shows it at once.
FIRST_SID: Final = 2**53 + 1000
# Accepted messages kept for GET /sandbox/messages; older ones are forgotten.
MAX_RECORDED_MESSAGES: Final = 10_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class SentMessage:
    """One message the sandbox accepted."""

    sid: int
    mobile: str  # as recorded: 11 digits for the mainland, E.164 otherwise
    text: str  # as delivered, signature included
    code: str | None  # the `#code#` value, None when the template has no `#code#`
    tpl_id: int
    at: float  # unix time from the sandbox's clock
    uid: str | None = None  # the send's `uid` form value
    callback_url: str | None = None  # the send's `callback_url`: its report is pushed there

    def to_json(self) -> JsonObject:
        """The object `GET /sandbox/messages` lists; the sid is a decimal string."""
        return {
            "sid": str(self.sid),
            "mobile": self.mobile,
            "text": self.text,
            "code": self.code,
            "tpl_id": self.tpl_id,
            "at": self.at,
            "uid": self.uid,
            "callback_url": self.callback_url,
        }


class Account:
    """The fake YunPian account: templates, accepted messages and their delivery reports, limits
    and pending faults.

    `clock` gives the unix time used for limits, message timestamps and when reports fall due,
    so tests can move time without sleeping. `report_settings` are the delivery reports'
    settings at the start and after a reset (ReportSettings: by default every report is a
    SUCCESS, available 0.5 s after its message).
    """

    def __init__(
        self,
        api_key: str = SANDBOX_API_KEY,
        templates: Iterable[SandboxTemplate] = (),
        *,
        enforce_limits: bool = True,
        clock: Clock = time.time,
        report_settings: ReportSettings | None = None,
    ) -> None:
        if not api_key:
            raise SandboxInputError("api_key must not be empty")
        self._api_key = api_key.encode()
        self._templates: dict[int, SandboxTemplate] = {}
        for template in templates:
            self.add_template(template)
        self._initial_enforce_limits = enforce_limits
        self.enforce_limits = enforce_limits
        self.clock = clock
        self.messages: list[SentMessage] = []
        self.request_counts: Counter[str] = Counter()
        self.limits = PerNumberLimits()
        self._faults = PendingFaults()
        self._next_sid = FIRST_SID
        self.reports = DeliveryReports(report_settings)

    def __repr__(self) -> str:
        # Never show the API key.
        return (
            f"{type(self).__name__}(templates={len(self._templates)}, "
            f"messages={len(self.messages)}, enforce_limits={self.enforce_limits})"
        )

    def has_api_key(self, api_key: str) -> bool:
        """Whether a request's apikey is the account's (compared in constant time)."""
        return secrets.compare_digest(api_key.encode(), self._api_key)

    @property
    def templates(self) -> list[SandboxTemplate]:
        """The account's templates, in the order they were first added."""
        return list(self._templates.values())

    def template(self, tpl_id: int) -> SandboxTemplate | None:
        """The template with this id, if the account has one."""
        return self._templates.get(tpl_id)

    def add_template(self, template: SandboxTemplate) -> None:
        """Adds a template, or replaces the one with the same tpl_id."""
        if template.tpl_id not in self._templates and len(self._templates) >= MAX_TEMPLATES:
            raise SandboxInputError(f"the sandbox holds at most {MAX_TEMPLATES} templates")
        self._templates[template.tpl_id] = template

    def remove_template(self, tpl_id: int) -> None:
        """Removes a template; KeyError if there is none with this id."""
        del self._templates[tpl_id]

    def set_template_status(
        self, tpl_id: int, check_status: str, reason: str | None = None
    ) -> None:
        """Moves a template to SUCCESS, CHECKING or FAIL (with a reason); KeyError if unknown."""
        require_check_status(check_status)
        template = self._templates[tpl_id]
        template.check_status = check_status
        template.reason = reason

    def inject(self, fault: Fault) -> None:
        """Queues a fault for the next `fault.times` API requests that match it."""
        self._faults.add(fault)

    @property
    def pending_faults(self) -> list[tuple[Fault, int]]:
        """The queued faults with how many more requests each applies to."""
        return self._faults.listed()

    def take_fault(self, path: str, mobile: str | None) -> Fault | None:
        """The first pending fault that matches an API request, used up once; None if none does."""
        return self._faults.take(path, mobile)

    def clear_faults(self) -> None:
        """Drops every pending fault."""
        self._faults.clear()

    def record_message(
        self,
        mobile: str,
        text: str,
        code: str | None,
        tpl_id: int,
        at: float,
        *,
        uid: str | None = None,
        callback_url: str | None = None,
    ) -> SentMessage:
        """Records an accepted message under the next sid, and its future delivery report; the
        oldest messages beyond the cap go."""
        message = SentMessage(
            sid=self._next_sid,
            mobile=mobile,
            text=text,
            code=code,
            tpl_id=tpl_id,
            at=at,
            uid=uid,
            callback_url=callback_url,
        )
        self._next_sid += 1
        self.reports.schedule(message.sid, mobile, at, uid=uid, callback_url=callback_url)
        self.messages.append(message)
        if len(self.messages) > MAX_RECORDED_MESSAGES:
            del self.messages[: len(self.messages) - MAX_RECORDED_MESSAGES]
        return message

    def messages_to(self, mobile: str) -> list[SentMessage]:
        """The accepted messages to this number (as recorded), oldest first."""
        return [message for message in self.messages if message.mobile == mobile]

    def last_code(self, mobile: str) -> str | None:
        """The `#code#` of the latest accepted message to this number, if any."""
        messages = self.messages_to(mobile)
        return messages[-1].code if messages else None

    def configure_reports(
        self, settings: ReportSettings | None = None, /, **changes: Any
    ) -> ReportSettings:
        """Sets how messages accepted from now on are reported, and returns the settings.

        The settings are `settings` (default: ReportSettings()) with `changes` (its fields by
        name) applied: `configure_reports(delay_seconds=0, failure_share=0.5)`. What is not
        given takes its default, not its current value. The FAIL rule counts afresh.
        """
        settings = dataclasses.replace(settings or ReportSettings(), **changes)
        self.reports.configure(settings)
        return settings

    @property
    def report_settings(self) -> ReportSettings:
        """How messages accepted from now on are reported."""
        return self.reports.settings

    @property
    def pending_reports(self) -> list[DeliveryReport]:
        """The reports not yet pulled or pushed (due or not), by when they are available."""
        return self.reports.pending(self.clock())

    @property
    def report_stats(self) -> ReportStats:
        """Pulls and pushes so far (ReportStats)."""
        return self.reports.stats()

    def pull_reports(self, page_size: int) -> list[DeliveryReport]:
        """Hands out and forgets up to page_size available reports, oldest first (a pull)."""
        return self.reports.pull(page_size, self.clock())

    def reset(self) -> None:
        """Clears messages, reports, faults, limit history and request counts and restores the
        limit and report settings; keeps the templates."""
        self.messages.clear()
        self.reports.reset()
        self._faults.clear()
        self.limits.clear()
        self.request_counts.clear()
        self.enforce_limits = self._initial_enforce_limits

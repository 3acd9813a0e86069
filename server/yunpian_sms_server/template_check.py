"""Checking a template: the local checks of templates.py, then a match against YunPian's list.

The account's templates (`tpl/get.json`, list form) are cached for a configurable time, and
checks that arrive while the list is being fetched share that one upstream call.

What a failed fetch becomes:

* YunPian answered with an error code (an invalid key -1, a quota -4/-5, a system error -50, …):
  the `ServiceError` of that code is raised, so the RPC fails through the error table (errors.py)
  (-1 is FAILED_PRECONDITION PROVIDER_AUTH_FAILED, -50 UNAVAILABLE PROVIDER_UNAVAILABLE, …).
  YunPian is telling the operator something about the account that a template report would hide.
* No usable answer (YunPian unreachable, no answer in time, connection lost, an HTTP 5xx without a
  YunPian body, a body that is not the documented list): the check still answers, with status
  NOT_CHECKED and a REMOTE_CHECK_FAILED problem saying why. The local checks stand on their own.

Failed fetches are never cached: the next check asks YunPian again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.templates import (
    Problem,
    ProblemReason,
    TemplateBook,
    estimate_segments,
    local_problems,
    strip_signature,
    yunpian_form,
)
from yunpian_sms_server.text_diff import closest, first_difference
from yunpian_sms_server.usage_types import GENERIC
from yunpian_sms_server.yunpian import DEADLINE_MARGIN_S, YunpianClient

# Characters of a template (or of a difference) quoted in a problem message.
QUOTE_CHARS: Final = 40
DIFFERENCE_CHARS: Final = 12

# YunPian's check_status values (tpl/get.json), best first: several templates may match.
_CHECK_STATUS_RANK: Final[Mapping[str, int]] = {"SUCCESS": 0, "CHECKING": 1, "FAIL": 2}
_UNCHECKED_WHY: Final[Mapping[Reason, str]] = {
    Reason.PROVIDER_UNREACHABLE: "YunPian could not be reached",
    Reason.PROVIDER_TIMEOUT: "YunPian did not answer in time",
    Reason.PROVIDER_CONNECTION_LOST: "the connection to YunPian was lost",
    Reason.PROVIDER_BAD_RESPONSE: "YunPian's answer was not the documented template list",
}

# The problems of the remote check (the others are templates.local_problems').
_REMOTE_REASONS: Final = frozenset(
    {
        ProblemReason.NO_MATCHING_TEMPLATE,
        ProblemReason.REMOTE_CHECK_FAILED,
        ProblemReason.TEMPLATE_PENDING,
        ProblemReason.TEMPLATE_REJECTED,
    }
)

Clock = Callable[[], float]


class ApprovalStatus(StrEnum):
    """Where a template stands at YunPian (the proto's TemplateStatus without its prefix)."""

    APPROVED = "APPROVED"
    PENDING = "PENDING"
    REJECTED = "REJECTED"
    NOT_FOUND = "NOT_FOUND"
    NOT_CHECKED = "NOT_CHECKED"


@dataclass(frozen=True, slots=True)
class AccountTemplate:
    """One template of the YunPian account, as `tpl/get.json` lists it."""

    tpl_id: str  # decimal string: YunPian's ids are 64-bit
    body: str  # tpl_content without its leading 【signature】
    check_status: str  # SUCCESS, CHECKING or FAIL
    reason: str  # YunPian's reason for a rejection; "" when it gives none
    international: bool  # country_code is set

    @property
    def approved(self) -> bool:
        """Whether YunPian sends SMS with this template."""
        return self.check_status == "SUCCESS"


@dataclass(frozen=True, slots=True)
class TemplateCheck:
    """The full result of checking one template (the fields of ValidateTemplateResponse)."""

    valid: bool
    problems: tuple[Problem, ...]
    content: str
    yunpian_content: str
    status: ApprovalStatus
    template_id: str
    status_reason: str
    estimated_segments: int

    def summary(self) -> str:
        """Why the template is not usable, in one sentence without the template text (for logs)."""
        if self.valid:
            return "The template is approved at YunPian."
        if self.status is ApprovalStatus.NOT_FOUND:
            return "No YunPian template matches it exactly."
        remote = [p for p in self.problems if p.reason in _REMOTE_REASONS]
        if remote:
            return remote[0].message
        return f"It has {len(self.problems)} local problem(s)."


@dataclass(frozen=True, slots=True)
class ConfiguredTemplate:
    """A template the config would send: for which usage type, to which kind of number."""

    usage_type: str
    international: bool
    content: str
    # An international number with no international template gets the domestic one.
    falls_back: bool = False

    @property
    def label(self) -> str:
        """How reports name it: "SignIn", "international Generic"."""
        if not self.international:
            return self.usage_type
        suffix = " (domestic template)" if self.falls_back else ""
        return f"international {self.usage_type}{suffix}"


def configured_templates(
    book: TemplateBook, *, international_enabled: bool
) -> list[ConfiguredTemplate]:
    """Every template the config can send: the domestic ones, then the international ones.

    When international sending is enabled, a usage type without an international template (its
    own or Generic) sends its domestic text to international numbers, so that text must be an
    approved international template too: it is listed as well.
    """
    found = [ConfiguredTemplate(name, False, text) for name, text in book.domestic.items()]
    found += [ConfiguredTemplate(name, True, text) for name, text in book.international.items()]
    if international_enabled and GENERIC not in book.international:
        found += [
            ConfiguredTemplate(name, True, content, falls_back=True)
            for name, content in book.domestic.items()
            if name not in book.international
        ]
    return found


def _quote(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(international: bool) -> str:
    return "international" if international else "domestic"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _difference(ours: str, theirs: str) -> str:
    """Where two texts first differ, e.g. 'at character 5 the template has "登陆" where …'."""
    found = first_difference(ours, theirs)
    if found is None:  # pragma: no cover - only called for texts that differ
        return "they are equal"
    mine = f'"{_quote(found.ours, DIFFERENCE_CHARS)}"'
    yours = f'"{_quote(found.theirs, DIFFERENCE_CHARS)}"'
    where = f"at character {found.at + 1}"
    if found.ours and found.theirs:
        return f"{where} the template has {mine} where YunPian's has {yours}"
    if found.ours:
        return f"{where} the template has {mine}, which YunPian's lacks"
    return f"{where} YunPian's has {yours}, which the template lacks"


def _closest(
    ours: str, candidates: Sequence[AccountTemplate]
) -> tuple[AccountTemplate, str] | None:
    """The candidate most like `ours` and where they differ (text_diff bounds the work)."""
    index = closest(ours, [candidate.body for candidate in candidates])
    if index is None:
        return None
    template = candidates[index]
    return template, _difference(ours, template.body)


def _not_found_problem(
    yunpian_content: str, international: bool, account: Sequence[AccountTemplate]
) -> Problem:
    kind = _kind(international)
    elsewhere = [
        t for t in account if t.international != international and t.body == yunpian_content
    ]
    if elsewhere:
        other = elsewhere[0]
        return Problem(
            ProblemReason.NO_MATCHING_TEMPLATE,
            f"YunPian has this text only as {_kind(other.international)} template "
            f"{other.tpl_id}; register it as {_article(kind)} {kind} template too.",
        )
    approved = [t for t in account if t.international == international and t.approved]
    closest = _closest(yunpian_content, approved)
    if closest is None:
        return Problem(
            ProblemReason.NO_MATCHING_TEMPLATE,
            f"YunPian lists no approved {kind} template; register this one "
            "(in its #code# form) and wait for approval.",
        )
    template, difference = closest
    return Problem(
        ProblemReason.NO_MATCHING_TEMPLATE,
        f"No approved {kind} template at YunPian matches exactly. The closest is template "
        f'{template.tpl_id} "{_quote(template.body, QUOTE_CHARS)}": {difference}. Change the '
        "template to match it, or register this one (in its #code# form) at YunPian.",
    )


def _best_match(matches: Sequence[AccountTemplate]) -> AccountTemplate:
    # SUCCESS over CHECKING over FAIL (over anything unknown); the first listed among equals.
    unknown = len(_CHECK_STATUS_RANK)
    return min(matches, key=lambda t: _CHECK_STATUS_RANK.get(t.check_status, unknown))


def compare(
    content: str, *, international: bool, account: Sequence[AccountTemplate]
) -> tuple[ApprovalStatus, str, str, list[Problem]]:
    """Matches a template against the account's list: (status, template_id, reason, problems)."""
    wanted = yunpian_form(content)
    matches = [t for t in account if t.international == international and t.body == wanted]
    if not matches:
        problem = _not_found_problem(wanted, international, account)
        return ApprovalStatus.NOT_FOUND, "", "", [problem]
    match = _best_match(matches)
    if match.approved:
        return ApprovalStatus.APPROVED, match.tpl_id, "", []
    if match.check_status == "FAIL":
        because = match.reason or "YunPian gave no reason"
        problem = Problem(
            ProblemReason.TEMPLATE_REJECTED,
            f"YunPian rejected template {match.tpl_id}: {because}. Change the template as "
            "YunPian asks and submit it again.",
        )
        return ApprovalStatus.REJECTED, match.tpl_id, match.reason, [problem]
    problem = Problem(
        ProblemReason.TEMPLATE_PENDING,
        f"YunPian is still reviewing template {match.tpl_id} ({match.check_status}); it refuses "
        "SMS with it until it is approved.",
    )
    return ApprovalStatus.PENDING, match.tpl_id, "", [problem]


def parse_account_templates(items: Sequence[Mapping[str, Any]]) -> list[AccountTemplate]:
    """Reads `tpl/get.json`'s list; PROVIDER_BAD_RESPONSE when an item is not as documented."""
    parsed = []
    for item in items:
        tpl_id, content = item.get("tpl_id"), item.get("tpl_content")
        status, reason = item.get("check_status"), item.get("reason")
        country_code = item.get("country_code")
        # Older docs typed tpl_id as a string; the samples are numbers.
        id_ok = (isinstance(tpl_id, int) and not isinstance(tpl_id, bool)) or (
            isinstance(tpl_id, str) and tpl_id.isascii() and tpl_id.isdigit()
        )
        if not (
            id_ok
            and isinstance(content, str)
            and isinstance(status, str)
            and isinstance(reason, str | None)
            and isinstance(country_code, str | None)
        ):
            raise ServiceError(
                Reason.PROVIDER_BAD_RESPONSE,
                "YunPian's template list is not the documented JSON.",
            )
        parsed.append(
            AccountTemplate(
                tpl_id=str(tpl_id),
                body=strip_signature(content),
                check_status=status,
                reason=reason or "",
                international=country_code is not None,
            )
        )
    return parsed


def _unchecked_problem(error: ServiceError) -> Problem:
    why = _UNCHECKED_WHY.get(error.reason) or error.message.rstrip(".")
    return Problem(
        ProblemReason.REMOTE_CHECK_FAILED,
        f"The template was not checked at YunPian: {why}. Retry later.",
    )


@dataclass(frozen=True, slots=True)
class _CachedList:
    templates: list[AccountTemplate]
    fetched_at: float


class TemplateChecker:
    """Checks templates locally and against the YunPian account's (briefly cached) list."""

    def __init__(
        self,
        yunpian: YunpianClient,
        *,
        cache_ttl_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._yunpian = yunpian
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cached: _CachedList | None = None
        self._in_flight: asyncio.Task[list[AccountTemplate]] | None = None

    async def check(
        self,
        content: str,
        *,
        international: bool,
        skip_remote: bool = False,
        time_remaining: float | None = None,
    ) -> TemplateCheck:
        """Checks one template ({{code}} form); raises the ServiceError of a YunPian error code."""
        [result] = await self.check_many(
            [(content, international)], skip_remote=skip_remote, time_remaining=time_remaining
        )
        return result

    async def check_many(
        self,
        templates: Sequence[tuple[str, bool]],
        *,
        skip_remote: bool = False,
        time_remaining: float | None = None,
    ) -> list[TemplateCheck]:
        """Checks (content, international) pairs against one fetch of the account's list."""
        account: list[AccountTemplate] | Problem | None = None
        if not skip_remote:
            account = await self._account_or_problem(time_remaining)
        return [self._result(content, intl, account) for content, intl in templates]

    @staticmethod
    def _result(
        content: str, international: bool, account: list[AccountTemplate] | Problem | None
    ) -> TemplateCheck:
        problems = local_problems(content)
        status, template_id, status_reason = ApprovalStatus.NOT_CHECKED, "", ""
        if isinstance(account, Problem):
            problems.append(account)
        elif account is not None:
            status, template_id, status_reason, remote = compare(
                content, international=international, account=account
            )
            problems.extend(remote)
        # Valid: approved at YunPian, or (remote check skipped) well formed.
        usable = status is ApprovalStatus.APPROVED or account is None
        return TemplateCheck(
            valid=not problems and usable,
            problems=tuple(problems),
            content=content,
            yunpian_content=yunpian_form(content),
            status=status,
            template_id=template_id,
            status_reason=status_reason,
            estimated_segments=estimate_segments(content),
        )

    async def _account_or_problem(
        self, time_remaining: float | None
    ) -> list[AccountTemplate] | Problem:
        try:
            return await self.account_templates(time_remaining=time_remaining)
        except ServiceError as error:
            if error.yunpian_code is not None:
                raise
            return _unchecked_problem(error)

    async def account_templates(
        self, *, time_remaining: float | None = None
    ) -> list[AccountTemplate]:
        """The account's templates, from the cache while it is fresh.

        Concurrent callers share one upstream call, which runs on the configured upstream timeout
        whoever started it; each caller waits at most its own `time_remaining` (less a margin),
        after which it gets PROVIDER_TIMEOUT while the call goes on for the others.
        """
        cached = self._cached
        if cached is not None and self._clock() - cached.fetched_at < self.cache_ttl_s:
            return cached.templates
        task = self._in_flight
        if task is None or task.done():
            task = asyncio.create_task(self._fetch())
            task.add_done_callback(_retrieve_exception)
            self._in_flight = task
        if time_remaining is None:
            return await asyncio.shield(task)
        budget = time_remaining - DEADLINE_MARGIN_S
        try:
            if budget <= 0:
                raise TimeoutError
            return await asyncio.wait_for(asyncio.shield(task), budget)
        except TimeoutError:
            raise ServiceError(
                Reason.PROVIDER_TIMEOUT, "YunPian did not answer within the call's deadline."
            ) from None

    async def _fetch(self) -> list[AccountTemplate]:
        try:
            templates = parse_account_templates(await self._yunpian.templates(time_remaining=None))
            self._cached = _CachedList(templates, self._clock())
            return templates
        finally:
            self._in_flight = None

    async def close(self) -> None:
        """Cancels a fetch in progress (before the HTTP session closes)."""
        task, self._in_flight = self._in_flight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceError):
                await task


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # A fetch whose every waiter gave up still fails quietly: the next check retries.
    if not task.cancelled():
        task.exception()

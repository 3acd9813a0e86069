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
from typing import Any, Final

from yunpian_sms_server.account_templates import (
    AccountTemplate,
    ApprovalStatus,
    compare,
    parse_account_templates,
)
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.templates import (
    Problem,
    ProblemReason,
    estimate_segments,
    local_problems,
    yunpian_form,
)
from yunpian_sms_server.yunpian import DEADLINE_MARGIN_S, YunpianClient

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

"""The YunPian account's templates, as `tpl/get.json` lists them, and how a template matches.

A template matches an account template when its `#code#` form equals the account's text without
its 【signature】, exactly. When none does, the problem names the closest approved one and where
the two first differ (text_diff bounds that work whatever the texts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.templates import Problem, ProblemReason, strip_signature, yunpian_form
from yunpian_sms_server.text_diff import closest, first_difference

# Characters of a template (or of a difference) quoted in a problem message.
QUOTE_CHARS: Final = 40
DIFFERENCE_CHARS: Final = 12

# YunPian's check_status values (tpl/get.json), best first: several templates may match.
_CHECK_STATUS_RANK: Final[Mapping[str, int]] = {"SUCCESS": 0, "CHECKING": 1, "FAIL": 2}


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

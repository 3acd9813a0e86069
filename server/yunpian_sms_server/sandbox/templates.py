"""The fake account's templates, in YunPian's form, and how a sent text matches one of them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

from yunpian_sms_server.sandbox.json_input import (
    JsonObject,
    SandboxInputError,
    is_int,
    json_object,
    reject_unknown_keys,
)
from yunpian_sms_server.sandbox.template_matching import (
    MAX_VARIABLES,
    MatchBudget,
    TemplatePattern,
    variable_count,
)

DEFAULT_SIGNATURE: Final = "【云片沙箱】"
# Templates one account holds (and so template bodies worth keeping prepared for matching).
MAX_TEMPLATES: Final = 1_000
MAX_TEMPLATE_CHARS: Final = 1_000
# The variable whose value a test reads back as the verification code.
CODE_VARIABLE: Final = "code"

CheckStatus = Literal["SUCCESS", "CHECKING", "FAIL"]
CHECK_STATUSES: Final[tuple[str, ...]] = get_args(CheckStatus)

_SIGNATURE = re.compile(r"【[^】]*】")
_REGION_LIST = re.compile(r"ALL|[A-Z]{2}(?:,[A-Z]{2})*")
_ALL_REGIONS: Final = "ALL"


def require_check_status(check_status: object) -> None:
    """SandboxInputError unless check_status is one of YunPian's (CHECK_STATUSES)."""
    if check_status not in CHECK_STATUSES:
        raise SandboxInputError(f"check_status must be one of {', '.join(CHECK_STATUSES)}")


@dataclass
class SandboxTemplate:
    """One template of the fake account, in YunPian's form (`#code#`, leading 【signature】)."""

    tpl_id: int
    content: str
    check_status: str = "SUCCESS"
    reason: str | None = None
    # None: a domestic template. Else the regions an international one may go to: "US,SG" or "ALL".
    country_code: str | None = None
    lang: str | None = None

    def __post_init__(self) -> None:
        if not is_int(self.tpl_id) or self.tpl_id <= 0:
            raise SandboxInputError("tpl_id must be a positive integer")
        if not isinstance(self.content, str) or not self.content.strip():
            raise SandboxInputError("tpl_content must be a non-empty string")
        if len(self.content) > MAX_TEMPLATE_CHARS:
            raise SandboxInputError(f"tpl_content must be at most {MAX_TEMPLATE_CHARS} characters")
        if variable_count(self.content) > MAX_VARIABLES:
            raise SandboxInputError(f"tpl_content may use at most {MAX_VARIABLES} #variables#")
        require_check_status(self.check_status)
        for name in ("reason", "lang"):
            if not isinstance(getattr(self, name), str | None):
                raise SandboxInputError(f"{name} must be a string or null")
        if self.country_code is not None and (
            not isinstance(self.country_code, str) or not _REGION_LIST.fullmatch(self.country_code)
        ):
            raise SandboxInputError(
                'country_code must be null, "ALL" or comma-separated ISO regions such as "US,SG"'
            )

    @property
    def international(self) -> bool:
        """Whether this is an international template (it lists the regions it may go to)."""
        return self.country_code is not None

    def allows_region(self, region: str) -> bool:
        """Whether an international template may be sent to a number of this region."""
        if self.country_code is None:
            return False
        return self.country_code == _ALL_REGIONS or region in self.country_code.split(",")

    def match(self, text: str, budget: MatchBudget) -> TemplateMatch | None:
        """How a sent text fills this template in; None when it does not.

        The text matches when it equals the content with the leading 【signature】 stripped, or
        with it; each `#name#` variable matches 1-16 ASCII letters/digits (a template uses at most
        MAX_VARIABLES), in time linear in the text (template_matching).
        Raises MatchBudgetError when the request's matches are out of steps.
        """
        signature, body = split_signature(self.content)
        pattern = _template_pattern(body)
        if (values := pattern.fullmatch(text, 0, budget)) is not None:
            delivered = signature + text
        elif signature and text.startswith(signature):
            values = pattern.fullmatch(text, len(signature), budget)
            delivered = text
        if values is None:
            return None
        return TemplateMatch(self, delivered, values.get(CODE_VARIABLE))

    def to_json(self) -> JsonObject:
        """The object `tpl/get.json` answers for this template."""
        return {
            "tpl_id": self.tpl_id,
            "tpl_content": self.content,
            "check_status": self.check_status,
            "reason": self.reason,
            "country_code": self.country_code,
            "lang": self.lang,
        }

    @classmethod
    def from_json(cls, data: object) -> SandboxTemplate:
        """Builds a template from a `tpl/get.json`-shaped object; SandboxInputError if it is bad."""
        obj = json_object(data, "template")
        reject_unknown_keys(
            obj, {"tpl_id", "tpl_content", "check_status", "reason", "country_code", "lang"}
        )
        for required in ("tpl_id", "tpl_content"):
            if required not in obj:
                raise SandboxInputError(f"{required} is required")
        check_status = obj.get("check_status", "SUCCESS")
        if not isinstance(check_status, str):
            raise SandboxInputError("check_status must be a string")
        return cls(
            tpl_id=cast(int, obj["tpl_id"]),
            content=cast(str, obj["tpl_content"]),
            check_status=check_status,
            reason=cast(str | None, obj.get("reason")),
            country_code=cast(str | None, obj.get("country_code")),
            lang=cast(str | None, obj.get("lang")),
        )


@dataclass(frozen=True)
class TemplateMatch:
    """A sent text that fills a template in."""

    template: SandboxTemplate
    delivered_text: str  # signature included, as YunPian records and bills it
    code: str | None  # the `#code#` value, None when the template has no `#code#`


def split_signature(content: str) -> tuple[str, str]:
    """Splits a leading 【signature】 from a text: ("【云片沙箱】", "body") or ("", content)."""
    found = _SIGNATURE.match(content)
    return (found.group(), content[found.end() :]) if found else ("", content)


@functools.lru_cache(maxsize=MAX_TEMPLATES)
def _template_pattern(body: str) -> TemplatePattern:
    return TemplatePattern.parse(body)

"""SMS templates: lookup by usage type, rendering, and the local checks of a template."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from yunpian_sms_server.usage_types import GENERIC
from yunpian_sms_server.verification_codes import MAX_CODE_LENGTH

# `{{code}}`, spaces inside the braces allowed: our form. YunPian's is `#code#`.
_CODE_PLACEHOLDER = re.compile(r"\{\{\s*code\s*\}\}")
# Any `{{…}}`; its name is the inside stripped of whitespace. The inside is one greedy run of
# non-braces, so a failed attempt gives back at most that run: linear time. Writing the spaces
# into the pattern (`\{\{\s*([^{}]*?)\s*\}\}`) lets three quantifiers share every space, which
# is cubic: "{{" and 2,000 spaces took seconds.
_ANY_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_LEADING_SIGNATURE = re.compile(r"^\s*【[^】]*】")
YUNPIAN_CODE_VARIABLE: Final = "#code#"
# YunPian refuses longer texts.
MAX_RENDERED_LENGTH: Final = 500
# One SMS holds 70 characters; a longer one is billed in segments of 67.
SINGLE_SEGMENT_LENGTH: Final = 70
MULTI_SEGMENT_LENGTH: Final = 67
# Characters the account's 【signature】 adds to every text, which YunPian prepends itself.
SIGNATURE_ALLOWANCE: Final = 8


class ProblemReason(StrEnum):
    """The TemplateProblem reasons: what can be wrong with a template."""

    CODE_PLACEHOLDER_MISSING = "CODE_PLACEHOLDER_MISSING"
    CODE_PLACEHOLDER_REPEATED = "CODE_PLACEHOLDER_REPEATED"
    UNKNOWN_PLACEHOLDER = "UNKNOWN_PLACEHOLDER"
    SIGNATURE_INCLUDED = "SIGNATURE_INCLUDED"
    EMPTY_CONTENT = "EMPTY_CONTENT"
    TOO_LONG = "TOO_LONG"
    NO_MATCHING_TEMPLATE = "NO_MATCHING_TEMPLATE"
    REMOTE_CHECK_FAILED = "REMOTE_CHECK_FAILED"
    TEMPLATE_PENDING = "TEMPLATE_PENDING"
    TEMPLATE_REJECTED = "TEMPLATE_REJECTED"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template, and what to change."""

    reason: ProblemReason
    message: str


def render(content: str, code: str) -> str:
    """Fills the verification code into a template."""
    return _CODE_PLACEHOLDER.sub(lambda _: code, content)


def yunpian_form(content: str) -> str:
    """The text to register at YunPian: `{{code}}` written as `#code#`."""
    return _CODE_PLACEHOLDER.sub(YUNPIAN_CODE_VARIABLE, content)


def strip_signature(text: str) -> str:
    """Removes a leading 【signature】 (as YunPian lists its templates)."""
    return _LEADING_SIGNATURE.sub("", text, count=1)


def segments_for_length(length: int) -> int:
    """Billed SMS segments for a text of this many characters, signature included."""
    if length <= SINGLE_SEGMENT_LENGTH:
        return 1
    return math.ceil(length / MULTI_SEGMENT_LENGTH)


def longest_rendering_length(content: str) -> int:
    """Length of the template rendered with the longest code allowed."""
    return len(render(content, "0" * MAX_CODE_LENGTH))


def estimate_segments(content: str) -> int:
    """Segments of the template rendered with the longest code, plus the signature allowance."""
    return segments_for_length(longest_rendering_length(content) + SIGNATURE_ALLOWANCE)


def placeholder_names(content: str) -> set[str]:
    """The name in every `{{…}}` of a template, without the spaces inside the braces."""
    return {found.group(1).strip() for found in _ANY_PLACEHOLDER.finditer(content)}


def local_problems(content: str) -> list[Problem]:
    """Every local problem of a template in `{{code}}` form (empty when it is well formed)."""
    if not content.strip():
        return [Problem(ProblemReason.EMPTY_CONTENT, "The template is empty; write the SMS text.")]
    problems = []
    codes = len(_CODE_PLACEHOLDER.findall(content))
    if codes == 0:
        problems.append(
            Problem(
                ProblemReason.CODE_PLACEHOLDER_MISSING,
                "The template has no {{code}} placeholder; add one where the code goes.",
            )
        )
    elif codes > 1:
        problems.append(
            Problem(
                ProblemReason.CODE_PLACEHOLDER_REPEATED,
                f"The template has {codes} {{{{code}}}} placeholders; keep exactly one.",
            )
        )
    unknown = sorted(placeholder_names(content) - {"code"})
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in unknown)
        problems.append(
            Problem(
                ProblemReason.UNKNOWN_PLACEHOLDER,
                f"The template has unknown placeholders ({names}); only {{{{code}}}} is filled in.",
            )
        )
    if _LEADING_SIGNATURE.match(content):
        problems.append(
            Problem(
                ProblemReason.SIGNATURE_INCLUDED,
                "The template starts with a 【signature】; remove it, YunPian adds the "
                "account's signature itself.",
            )
        )
    length = longest_rendering_length(content)
    if length > MAX_RENDERED_LENGTH:
        problems.append(
            Problem(
                ProblemReason.TOO_LONG,
                f"The rendered SMS can be {length} characters; YunPian accepts at most "
                f"{MAX_RENDERED_LENGTH}. Shorten the template.",
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class TemplateBook:
    """The configured templates, by usage type name, domestic and international."""

    domestic: Mapping[str, str] = field(default_factory=dict)
    international: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, usage_type: str, *, international: bool) -> str | None:
        """The template for a usage type, with its fallbacks; None when there is none.

        International: the exact international template, its Generic, then the mainland lookup.
        Mainland: the exact template, then Generic.
        """
        if international:
            found = self.international.get(usage_type) or self.international.get(GENERIC)
            if found is not None:
                return found
        return self.domestic.get(usage_type) or self.domestic.get(GENERIC)


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

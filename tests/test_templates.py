"""Template lookup, rendering and local checks."""

from __future__ import annotations

import re
import time
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yunpian_sms_server.service import MAX_TEMPLATE_CONTENT_LENGTH
from yunpian_sms_server.templates import (
    MAX_RENDERED_LENGTH,
    ProblemReason,
    TemplateBook,
    estimate_segments,
    local_problems,
    placeholder_names,
    render,
    segments_for_length,
    strip_signature,
    yunpian_form,
)

# What the issue allows one check of a template: CPU time on the event loop, per call.
MAX_CHECK_CPU_S: Final = 0.05
# The worst inputs found for the local checks, at the length cap: "{{" and spaces made the old
# placeholder pattern backtrack cubically (~3 s); the others are the most placeholders, braces
# and whitespace runs a caller can pack in.
WORST_CONTENT: Final = {
    "open braces then spaces": "{{" + " " * (MAX_TEMPLATE_CONTENT_LENGTH - 2),
    "open braces then other spaces": "{{" + "\t\u3000" * (MAX_TEMPLATE_CONTENT_LENGTH // 2 - 1),
    "open braces, code, then spaces": "{{ code" + " " * (MAX_TEMPLATE_CONTENT_LENGTH - 7),
    "only open braces": "{" * MAX_TEMPLATE_CONTENT_LENGTH,
    "pairs of open braces and a space": "{{ " * (MAX_TEMPLATE_CONTENT_LENGTH // 3),
    "short unknown placeholders": "{{x}}" * (MAX_TEMPLATE_CONTENT_LENGTH // 5),
    "spaced code placeholders": "{{ code }}" * (MAX_TEMPLATE_CONTENT_LENGTH // 10),
    "spaces then an unclosed signature": " " * (MAX_TEMPLATE_CONTENT_LENGTH - 1) + "【",
}
# The definition of a placeholder's name that spelled out the spaces (and backtracked cubically).
_SPACES_IN_PATTERN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def test_render_fills_the_code_with_spaces_inside_the_braces_allowed() -> None:
    assert render("验证码{{code}}，{{ code }}", "1234") == "验证码1234，1234"


def test_yunpian_form_writes_the_placeholder_as_hash_code() -> None:
    assert yunpian_form("您的验证码是{{ code }}。") == "您的验证码是#code#。"


def test_strip_signature_removes_only_a_leading_signature() -> None:
    assert strip_signature("【云片网】您的验证码是#code#") == "您的验证码是#code#"
    assert strip_signature("您的【验证码】是#code#") == "您的【验证码】是#code#"


@pytest.mark.parametrize(
    ("content", "reasons"),
    [
        ("您的验证码是{{code}}。", []),
        ("", [ProblemReason.EMPTY_CONTENT]),
        ("   ", [ProblemReason.EMPTY_CONTENT]),
        ("您的验证码。", [ProblemReason.CODE_PLACEHOLDER_MISSING]),
        ("{{code}} and {{ code }}", [ProblemReason.CODE_PLACEHOLDER_REPEATED]),
        ("{{code}} for {{user}}", [ProblemReason.UNKNOWN_PLACEHOLDER]),
        ("【云片网】您的验证码是{{code}}", [ProblemReason.SIGNATURE_INCLUDED]),
        ("x" * MAX_RENDERED_LENGTH + "{{code}}", [ProblemReason.TOO_LONG]),
        ("{{name}}", [ProblemReason.CODE_PLACEHOLDER_MISSING, ProblemReason.UNKNOWN_PLACEHOLDER]),
    ],
)
def test_local_problems_name_each_problem(content: str, reasons: list[ProblemReason]) -> None:
    problems = local_problems(content)
    assert [problem.reason for problem in problems] == reasons
    assert all(problem.message.endswith(".") for problem in problems)


def test_placeholder_names_drop_the_spaces_inside_the_braces() -> None:
    content = "{{code}} {{ code }} {{\tuser name\u3000}} {{}} {{ {{x}} }} {{a}b}}"
    assert placeholder_names(content) == {"code", "user name", "", "x"}


# Braces, several kinds of whitespace (str.strip's and the pattern's \s alike) and name pieces.
PLACEHOLDER_PIECES: Final = st.sampled_from(
    ["{", "}", "{{", "}}", " ", "\t", "\u3000", "\x1c", "code", "x"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(PLACEHOLDER_PIECES, max_size=20).map("".join))
def test_placeholder_names_match_the_pattern_that_spelled_out_the_spaces(content: str) -> None:
    expected = {found.group(1) for found in _SPACES_IN_PATTERN.finditer(content)}
    assert placeholder_names(content) == expected


@pytest.mark.parametrize("content", list(WORST_CONTENT.values()), ids=list(WORST_CONTENT))
def test_local_checks_of_the_worst_content_take_under_50_ms_of_cpu(content: str) -> None:
    started = time.thread_time()
    problems = local_problems(content)
    spent = time.thread_time() - started
    assert problems  # each one is a bad template
    assert spent < MAX_CHECK_CPU_S, f"{spent * 1000:.1f} ms"


def test_template_of_exactly_the_limit_is_not_too_long() -> None:
    content = "x" * (MAX_RENDERED_LENGTH - 10) + "{{code}}"  # rendered with a 10-char code
    assert local_problems(content) == []


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (500, 8)]
)
def test_segments_follow_the_70_67_rule(length: int, segments: int) -> None:
    assert segments_for_length(length) == segments


def test_estimate_segments_counts_the_longest_code_and_the_signature() -> None:
    # 52 characters + a 10-character code + the 8-character signature allowance = 70: one segment.
    assert estimate_segments("x" * 52 + "{{code}}") == 1
    assert estimate_segments("x" * 53 + "{{code}}") == 2


def test_lookup_falls_back_to_generic_then_to_the_mainland_templates() -> None:
    book = TemplateBook(
        domestic={"SignIn": "sign-in {{code}}", "Generic": "generic {{code}}"},
        international={"Register": "intl register {{code}}"},
    )
    assert book.lookup("SignIn", international=False) == "sign-in {{code}}"
    assert book.lookup("BindMfa", international=False) == "generic {{code}}"
    assert book.lookup("Register", international=True) == "intl register {{code}}"
    assert book.lookup("SignIn", international=True) == "sign-in {{code}}"
    assert book.lookup("BindMfa", international=True) == "generic {{code}}"


def test_lookup_prefers_the_international_generic_over_the_mainland_exact_template() -> None:
    book = TemplateBook(
        domestic={"SignIn": "sign-in {{code}}", "Generic": "generic {{code}}"},
        international={"Generic": "intl {{code}}"},
    )
    assert book.lookup("SignIn", international=True) == "intl {{code}}"


def test_lookup_without_any_template_finds_nothing() -> None:
    assert TemplateBook().lookup("SignIn", international=False) is None

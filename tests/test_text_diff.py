"""Similarity, the closest candidate and the first difference, in time bounded by the texts."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yunpian_sms_server.text_diff import (
    COMPARED_CHARS,
    SCANNED_CHARS,
    Difference,
    closest,
    common_subsequence_length,
    first_difference,
    similarity,
)

# What the issue allows one template check: CPU time on the event loop, per call.
MAX_CHECK_CPU_S: Final = 0.05
# Distinct ideographs: no character repeats, so every shared-character bound ties.
_IDEOGRAPHS: Final = [chr(0x4E00 + offset) for offset in range(COMPARED_CHARS)]


def _shuffled(seed: int) -> str:
    chars = _IDEOGRAPHS[:]
    random.Random(seed).shuffle(chars)
    return "".join(chars)


# The worst inputs found for the closest-template search, at ValidateTemplate's content cap:
# one repeated character against templates that alternate it (difflib took minutes: every match
# is one character long, so its recursion goes 2,000 deep over the whole text), and 2,000
# distinct characters against as many shuffles of them as the scan takes (every bound ties, so
# the whole shortlist is compared in full).
WORST_SEARCHES: Final[dict[str, tuple[str, list[str]]]] = {
    "repeated against alternating": ("a" * COMPARED_CHARS, ["ba" * COMPARED_CHARS] * 100),
    "distinct against shuffles": (
        "".join(_IDEOGRAPHS),
        [_shuffled(seed) for seed in range(SCANNED_CHARS // COMPARED_CHARS + 5)],
    ),
}


def _longest_common_subsequence(a: str, b: str) -> int:
    """The textbook quadratic table."""
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for index, other in enumerate(b):
            current.append(
                previous[index] + 1 if char == other else max(previous[index + 1], current[-1])
            )
        previous = current
    return previous[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcx登录", max_size=40), st.text(alphabet="abcy登陆", max_size=40))
def test_common_subsequence_length_matches_the_textbook_table(a: str, b: str) -> None:
    assert common_subsequence_length(a, b) == _longest_common_subsequence(a, b)


def test_similarity_runs_from_zero_to_one() -> None:
    assert similarity("abc", "abc") == 1.0
    assert similarity("abc", "xyz") == 0.0
    assert similarity("", "") == 1.0
    assert similarity("您的登陆验证码", "您的登录验证码") == pytest.approx(12 / 14)


def test_closest_picks_the_most_similar_and_the_first_among_equals() -> None:
    candidates = ["您的验证码是#code#", "您的登录验证码是#code#，5分钟内有效。", "x", "x"]
    assert closest("您的登陆验证码是#code#，5分钟内有效。", candidates) == 1
    assert closest("x", candidates) == 2
    assert closest("x", []) is None


def test_closest_searches_only_the_candidates_within_the_scan() -> None:
    filler = "z" * COMPARED_CHARS
    past_the_scan = [filler] * math.ceil(SCANNED_CHARS / COMPARED_CHARS) + ["exact"]
    assert closest("exact", past_the_scan) == 0
    assert closest("exact", past_the_scan[1:]) == len(past_the_scan) - 2


@pytest.mark.parametrize(
    ("ours", "theirs", "difference"),
    [
        ("您的登陆验证码", "您的登录验证码", Difference(3, "陆", "录")),
        ("验证码。谢谢", "验证码。", Difference(4, "谢谢", "")),
        ("验证码。", "验证码，5分钟内有效。", Difference(3, "", "，5分钟内有效")),
        ("abc", "abc", None),
    ],
)
def test_first_difference_names_a_change_an_addition_and_an_omission(
    ours: str, theirs: str, difference: Difference | None
) -> None:
    assert first_difference(ours, theirs) == difference


def test_first_difference_is_found_past_a_long_common_start_and_end() -> None:
    start, end = "a" * 5000, "b" * 5000
    assert first_difference(start + "x" + end, start + "yy" + end) == Difference(5000, "x", "yy")


@pytest.mark.parametrize(
    ("ours", "candidates"), list(WORST_SEARCHES.values()), ids=list(WORST_SEARCHES)
)
def test_the_worst_searches_take_under_50_ms_of_cpu(ours: str, candidates: Sequence[str]) -> None:
    started = time.thread_time()
    index = closest(ours, candidates)
    assert index is not None
    first_difference(ours, candidates[index])
    spent = time.thread_time() - started
    assert spent < MAX_CHECK_CPU_S, f"{spent * 1000:.1f} ms"

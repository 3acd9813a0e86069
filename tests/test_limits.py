"""Rate limits as values (limits.py): "COUNT/PERIOD" parsed and bounded, and the windows a send
counts in."""

from __future__ import annotations

import re

import pytest

from yunpian_sms_server.limits import (
    MAX_LIMIT_COUNT,
    MAX_LIMIT_PERIOD_S,
    Limit,
    Window,
    parse_limit,
)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1/60s", Limit(1, 60.0, "1/60s")),
        ("5/1h", Limit(5, 3600.0, "5/1h")),
        ("10/d", Limit(10, 86400.0, "10/d")),
        ("10/1d", Limit(10, 86400.0, "10/1d")),
        ("2/m", Limit(2, 60.0, "2/m")),
        ("3/5m", Limit(3, 300.0, "3/5m")),
        ("1000000000/366d", Limit(MAX_LIMIT_COUNT, float(MAX_LIMIT_PERIOD_S), "1000000000/366d")),
    ],
)
def test_parse_limit_reads_count_and_period(text: str, limit: Limit) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["", "5", "5/1w", "-1/1s", "a/1s", "1/1.5s"])
def test_parse_limit_rejects_malformed_limits(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        parse_limit(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/1s", "'0/1s': COUNT must be 1 to 1000000000"),
        ("99999999999/1s", "'99999999999/1s': COUNT must be 1 to 1000000000"),
        ("1/0s", "'1/0s': PERIOD must be more than 0 and at most 366 days"),
        ("1/00s", "'1/00s': PERIOD must be more than 0 and at most 366 days"),
        ("1/367d", "'1/367d': PERIOD must be more than 0 and at most 366 days"),
        (
            "1/9999999999999999d",
            "'1/9999999999999999d': PERIOD must be more than 0 and at most 366 days",
        ),
    ],
)
def test_parse_limit_rejects_counts_and_periods_out_of_bounds(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_limit(text)


def test_a_limit_with_thousands_of_digits_is_out_of_bounds_not_a_crash() -> None:
    with pytest.raises(ValueError, match="PERIOD must be more than 0"):
        parse_limit("1/" + "9" * 5000 + "s")


@pytest.mark.parametrize("text", [" 5 / 1h ", "5/ 1h", "5 /1h"])
def test_parse_limit_allows_spaces_and_names_the_limit_without_them_around(text: str) -> None:
    limit = parse_limit(text)
    assert (limit.count, limit.period_s) == (5, 3600.0)
    assert limit.text == text.strip()


def test_windows_of_one_subject_share_its_key_whatever_their_limit() -> None:
    short, long = parse_limit("1/60s"), parse_limit("5/1h")
    phone = "+8613800138000"
    assert Window("phone", phone, short).subject_key == Window("phone", phone, long).subject_key
    assert Window("phone", phone, short).subject_key != Window("caller", phone, short).subject_key
    assert Window("phone", phone, short).subject_key != Window("phone", "+86139", short).subject_key

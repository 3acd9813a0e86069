"""Domain errors (errors.py): what a `ServiceError` tells about itself, and bounded texts."""

from __future__ import annotations

import pytest

from yunpian_sms_server.errors import (
    DELIVERY_UNKNOWN,
    MAX_DETAIL_CHARS,
    Reason,
    ServiceError,
    bounded,
    invalid_argument,
)


def test_an_error_is_its_message_and_keeps_what_it_was_given() -> None:
    error = ServiceError(Reason.RATE_LIMITED, "Too many.", metadata={"scope": "phone"})
    assert str(error) == error.message == "Too many."
    assert error.reason is Reason.RATE_LIMITED
    assert error.metadata == {"scope": "phone"}
    assert (error.field_violation, error.precondition, error.quota, error.retry_after_s) == (
        None,
        None,
        None,
        None,
    )


def test_the_metadata_is_the_errors_own_copy() -> None:
    given = {"scope": "phone"}
    error = ServiceError(Reason.RATE_LIMITED, "Too many.", metadata=given)
    given["scope"] = "caller"
    assert error.metadata == {"scope": "phone"}


@pytest.mark.parametrize(("metadata", "code"), [({"yunpian_code": "-50"}, -50), ({}, None)])
def test_yunpian_code_is_read_from_the_metadata(metadata: dict[str, str], code: int | None) -> None:
    assert ServiceError(Reason.PROVIDER_UNAVAILABLE, "x", metadata=metadata).yunpian_code == code


@pytest.mark.parametrize(
    ("metadata", "replayed", "delivery_unknown"),
    [
        ({}, False, False),
        ({"replayed": "true", "delivery": DELIVERY_UNKNOWN}, True, True),
        ({"replayed": "false", "delivery": "sent"}, False, False),
    ],
)
def test_replayed_and_delivery_unknown_are_read_from_the_metadata(
    metadata: dict[str, str], replayed: bool, delivery_unknown: bool
) -> None:
    error = ServiceError(Reason.PROVIDER_TIMEOUT, "x", metadata=metadata)
    assert (error.replayed, error.delivery_unknown) == (replayed, delivery_unknown)


def test_invalid_argument_names_the_field_with_the_message() -> None:
    error = invalid_argument(Reason.INVALID_CODE, "code", "The code must be 4-10 characters.")
    assert error.reason is Reason.INVALID_CODE
    assert error.field_violation is not None
    assert (error.field_violation.field, error.field_violation.description) == (
        "code",
        "The code must be 4-10 characters.",
    )


@pytest.mark.parametrize("length", [0, 1, MAX_DETAIL_CHARS - 1, MAX_DETAIL_CHARS])
def test_a_text_within_the_limit_is_kept_whole(length: int) -> None:
    text = "字" * length
    assert bounded(text) == text


@pytest.mark.parametrize("length", [MAX_DETAIL_CHARS + 1, MAX_DETAIL_CHARS * 100])
def test_a_longer_text_is_cut_to_the_limit_with_an_ellipsis(length: int) -> None:
    text = "".join(str(n % 10) for n in range(length))
    cut = bounded(text)
    assert len(cut) == MAX_DETAIL_CHARS
    assert cut == text[: MAX_DETAIL_CHARS - 1] + "…"


def test_bounded_takes_another_limit() -> None:
    assert bounded("abcdef", 4) == "abc…"
    assert bounded("abcd", 4) == "abcd"

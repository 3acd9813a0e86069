"""Phone number parsing and masking."""

from __future__ import annotations

import pytest

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.phone import mask_number, mask_numbers_in_text, parse_phone


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "+8613800138000",
        "8613800138000",
        "+86 138-0013-8000",
        "138 0013 8000",
        "(138) 0013.8000",
        " 13800138000 ",
        "(+86) 138 0013 8000",
    ],
)
def test_parse_phone_sends_mainland_numbers_as_11_digits(raw: str) -> None:
    phone = parse_phone(raw)
    assert phone.yunpian_mobile == "13800138000"
    assert phone.e164 == "+8613800138000"
    assert phone.region == "CN"
    assert not phone.international


@pytest.mark.parametrize(
    ("raw", "e164", "region"),
    [
        ("+14155552671", "+14155552671", "US"),
        ("+1 (415) 555-2671", "+14155552671", "US"),
        ("+85291234567", "+85291234567", "HK"),
        ("+44 7400 123456", "+447400123456", "GB"),
        ("(+1) 415 555 2671", "+14155552671", "US"),
    ],
)
def test_parse_phone_sends_other_numbers_as_e164(raw: str, e164: str, region: str) -> None:
    phone = parse_phone(raw)
    assert phone.yunpian_mobile == e164
    assert phone.region == region
    assert phone.international


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "1-800-FLOWERS",
        "1380013800",  # ten digits
        "12345678901",  # eleven digits, not 1[3-9]
        "+86 10 1234 5678",  # a Beijing landline
        "+44 20 7946 0958",  # a London landline
        "+1 555",
        "1" * 40,
        "++8613800138000",
        "(++86) 138 0013 8000",
        "138+0013+8000",
        "13800138000\x00",
    ],
)
def test_parse_phone_rejects_invalid_numbers(raw: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_phone(raw)
    assert caught.value.reason is Reason.INVALID_PHONE_NUMBER
    assert caught.value.field_violation is not None
    assert caught.value.field_violation.field == "phone_number"


def test_parse_phone_error_messages_do_not_echo_the_number() -> None:
    with pytest.raises(ServiceError) as caught:
        parse_phone("12345678901")
    assert "12345678901" not in caught.value.message


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("13800138000", "138****8000"),
        ("+14155552671", "+1415****671"),
        ("+85291234567", "+8529****567"),
        ("1234567", "12****67"),
        ("123", "****"),
    ],
)
def test_mask_number_hides_the_middle(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_mask_numbers_in_text_masks_every_number_in_yunpian_details() -> None:
    detail = "号码：13717807729, 超过频率; mobile:+14155552671 tpl 42"
    masked = mask_numbers_in_text(detail)
    assert masked == "号码：137****7729, 超过频率; mobile:+1415****671 tpl 42"


def test_parsed_phone_exposes_only_its_masked_form_for_logs() -> None:
    assert parse_phone("+86 138-0013-8000").masked == "138****8000"

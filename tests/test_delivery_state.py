"""Delivery reports as values (delivery_state.py): YunPian's report format, read from a pull's
JSON array or a push's `sms_status` field (URL-encoded once more by some senders), and what a
sent message looks like once its report is overdue."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any
from urllib.parse import quote_plus

import pytest

from yunpian_sms_server.delivery_state import (
    MAX_CARRIER_TEXT,
    MAX_REPORTS,
    DeliveryReport,
    DeliveryState,
    ReportFormatError,
    SentMessage,
    decode_pushed_reports,
    parse_reports,
    report_latencies,
)

SID = "9007199254741993"  # above 2**53: must stay exact


def wire(**fields: Any) -> dict[str, Any]:
    """One report as YunPian writes it (pull and push), with fields replaced."""
    return {
        "sid": int(SID),
        "uid": None,
        "user_receive_time": "2023-11-15 14:13:23",
        "error_msg": "DELIVRD",
        "mobile": "13800138000",
        "report_status": "SUCCESS",
        "error_detail": "",
        **fields,
    }


def test_a_success_report_is_delivered_with_its_code_and_china_time_converted() -> None:
    [report] = parse_reports([wire()])
    # 14:13:23 in China (UTC+8) is 06:13:23 UTC.
    utc = calendar.timegm(time.strptime("2023-11-15 06:13:23", "%Y-%m-%d %H:%M:%S"))
    assert report == DeliveryReport(SID, DeliveryState.DELIVERED, "DELIVRD", "", float(utc))


def test_a_fail_report_is_failed_with_its_code_and_detail_as_written() -> None:
    [report] = parse_reports(
        [wire(report_status="FAIL", error_msg="DB:0103", error_detail="用户关机")]
    )
    assert (report.state, report.carrier_code, report.carrier_detail) == (
        DeliveryState.FAILED,
        "DB:0103",
        "用户关机",
    )


@pytest.mark.parametrize("sid", [int(SID), SID], ids=["json-integer", "decimal-string"])
def test_the_sid_is_kept_exact_as_a_decimal_string(sid: int | str) -> None:
    [report] = parse_reports([wire(sid=sid)])
    assert report.message_id == SID


@pytest.mark.parametrize(
    "receive_time", [None, "", "2023-11-15T14:13:23", "yesterday", 1700000000], ids=repr
)
def test_a_missing_or_unreadable_receive_time_is_none_not_an_error(receive_time: Any) -> None:
    [report] = parse_reports([wire(user_receive_time=receive_time)])
    assert report.received_at is None
    assert report.state is DeliveryState.DELIVERED


def test_missing_codes_are_empty_and_long_ones_are_cut() -> None:
    [bare, long] = parse_reports(
        [
            {"sid": 1, "report_status": "SUCCESS"},
            wire(error_msg="X" * 10_000, error_detail="细" * 10_000),
        ]
    )
    assert (bare.carrier_code, bare.carrier_detail, bare.received_at) == ("", "", None)
    assert long.carrier_code == "X" * MAX_CARRIER_TEXT
    assert long.carrier_detail == "细" * MAX_CARRIER_TEXT


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"sid": 1}, "not a JSON array"),
        ("[]", "not a JSON array"),
        ([wire()] * (MAX_REPORTS + 1), f"more than {MAX_REPORTS}"),
        ([wire(), "report"], "report 1 is not a JSON object"),
        ([wire(sid=None)], "report 0 has no sid"),
        ([wire(sid=True)], "report 0 has no sid"),
        ([wire(sid=-5)], "report 0 has no sid"),
        ([wire(sid="12a")], "report 0 has no sid"),
        ([wire(sid=1.5)], "report 0 has no sid"),
        ([wire(report_status="DELIVRD")], "report_status is not SUCCESS or FAIL"),
        ([wire(report_status=None)], "report_status is not SUCCESS or FAIL"),
        ([wire(error_msg=7)], "must be text"),
        ([wire(error_detail=["x"])], "must be text"),
    ],
    ids=[
        "object",
        "string",
        "too-many",
        "not-an-object",
        "no-sid",
        "bool-sid",
        "negative-sid",
        "letters-in-sid",
        "float-sid",
        "unknown-status",
        "no-status",
        "numeric-code",
        "list-detail",
    ],
)
def test_anything_but_a_report_array_is_refused_saying_what_is_wrong(
    data: Any, problem: str
) -> None:
    with pytest.raises(ReportFormatError, match=problem):
        parse_reports(data)


def test_a_full_batch_is_read() -> None:
    reports = parse_reports([wire(sid=n) for n in range(MAX_REPORTS)])
    assert [r.message_id for r in reports] == [str(n) for n in range(MAX_REPORTS)]


# Text that URL-encoding changes: '+', spaces, '%', '&', '=', and Chinese.
TRICKY = wire(report_status="FAIL", error_msg="MK:0+1 %20", error_detail="用户 关机 & a=b")


def test_a_pushed_field_is_read_once_form_decoded() -> None:
    # What the web framework hands over: the form value, URL-decoded once.
    assert decode_pushed_reports(json.dumps([TRICKY], ensure_ascii=False)) == parse_reports(
        [TRICKY]
    )


def test_a_pushed_field_encoded_twice_is_decoded_once_more() -> None:
    encoded_again = quote_plus(json.dumps([TRICKY], ensure_ascii=False))
    [report] = decode_pushed_reports(encoded_again)
    assert (report.carrier_code, report.carrier_detail) == ("MK:0+1 %20", "用户 关机 & a=b")


@pytest.mark.parametrize(
    "field",
    ["", "sms_status", "[{", quote_plus("[{"), quote_plus(quote_plus(json.dumps([wire()])))],
    ids=["empty", "word", "truncated", "truncated-encoded", "encoded-three-times"],
)
def test_a_pushed_field_that_is_no_json_even_decoded_again_is_refused(field: str) -> None:
    with pytest.raises(ReportFormatError, match="not a JSON array"):
        decode_pushed_reports(field)


def test_a_pushed_json_array_of_bad_reports_is_refused() -> None:
    with pytest.raises(ReportFormatError, match="report 0 has no sid"):
        decode_pushed_reports(json.dumps([{"report_status": "SUCCESS"}]))


def test_a_pending_message_turns_unknown_only_past_the_report_wait() -> None:
    pending = SentMessage("1", "checkout", sent_at=1000.0)
    assert pending.as_seen_at(1010.0, report_wait_s=10.0).state is DeliveryState.PENDING
    assert pending.as_seen_at(1010.5, report_wait_s=10.0).state is DeliveryState.UNKNOWN
    delivered = SentMessage("2", "checkout", 1000.0, DeliveryState.DELIVERED, "DELIVRD")
    assert delivered.as_seen_at(99_999.0, report_wait_s=10.0).state is DeliveryState.DELIVERED
    failed = SentMessage("3", "checkout", 1000.0, DeliveryState.FAILED, "UNDELIV")
    assert failed.as_seen_at(99_999.0, report_wait_s=10.0).state is DeliveryState.FAILED


def test_latencies_are_of_the_messages_received() -> None:
    messages = [
        SentMessage("1", "a", 100.0, DeliveryState.DELIVERED, received_at=103.0),
        SentMessage("2", "a", 100.0, DeliveryState.FAILED),
        SentMessage("3", "a", 200.0, DeliveryState.DELIVERED, received_at=260.0),
    ]
    assert report_latencies(messages) == [3.0, 60.0]

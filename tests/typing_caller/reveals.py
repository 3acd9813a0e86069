"""Values the SDK hands out, each in a `reveal_type`: tests/test_client_typing.py runs mypy on
this against a fresh install and compares what it reveals with the precise type it expects for
each expression (a google.rpc detail's too, with the mypy setting client/README.md gives).
Type-checked only, never run."""

from __future__ import annotations

from typing import reveal_type

from google.rpc import error_details_pb2

from yunpian_sms_client import AsyncSmsClient, SmsClient, SmsError


def sync_calls(sms: SmsClient) -> None:
    try:
        report = sms.validate_template(usage_type="SignIn")
    except SmsError as error:
        reveal_type(error.code)
        reveal_type(error.reason)
        reveal_type(error.retry_delay)
        reveal_type(error.yunpian_code)
        reveal_type(error.metadata)
        reveal_type(error.field_violations)
        reveal_type(error.details)
        reveal_type(error.delivery_unknown)
        for detail in error.details:
            if isinstance(detail, error_details_pb2.QuotaFailure):
                reveal_type(detail.violations)
        return
    reveal_type(report.problems)
    reveal_type(report.problems[0].reason)
    reveal_type(report.status)
    status = sms.get_delivery_status("76815478050")
    reveal_type(status.state)
    reveal_type(status.receive_time)


async def async_calls(sms: AsyncSmsClient) -> None:
    reveal_type(await sms.send_code("13800138000", "123456"))
    checked = await sms.check_verification("482915", verification_id="v")
    reveal_type(checked.verification.status)

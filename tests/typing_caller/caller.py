"""Caller code as a strict-typing user of the SDK writes it; tests/test_client_typing.py runs
`mypy --strict --disallow-any-expr` on it against a fresh install, so every value it reads from
the SDK must have a precise type, never Any. (It names no message class as a value: protoc's
.pyi constructors accept plain mappings, `Mapping[Any, Any]`, which that flag refuses to see.)
Type-checked only, never run."""

from __future__ import annotations

from datetime import datetime

import grpc

from yunpian_sms_client import (
    AsyncSmsClient,
    DeliveryState,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SmsClient,
    SmsError,
    TemplateProblem,
    VerificationStatus,
    new_request_id,
)


def send_and_follow(sms: SmsClient, phone: str) -> datetime | None:
    try:
        sent = sms.send_code(phone, "123456", usage_type="SignIn", request_id=new_request_id())
    except ResourceExhaustedError as error:
        code: grpc.StatusCode = error.code
        wait: float | None = error.retry_delay
        print(code.name, error.reason, wait, error.yunpian_code)
        return None
    except InvalidArgumentError as error:
        for field, description in error.field_violations:
            print(field.upper(), description)
        return None
    except SmsError as error:
        if error.code is grpc.StatusCode.UNAVAILABLE and error.retryable:
            print(error.metadata.get("yunpian_msg", ""), error.delivery_unknown)
        return None
    message_id: str = sent.message_id
    segments: int = sent.segment_count
    print(segments)
    status = sms.get_delivery_status(message_id, timeout=2.0)
    if status.state == DeliveryState.DELIVERY_STATE_FAILED:
        print(status.carrier_code, status.carrier_detail)
    if not status.HasField("receive_time"):
        return None
    return status.receive_time.ToDatetime()


def verify(sms: SmsClient, phone: str, typed_code: str) -> bool:
    started = sms.start_verification(phone, usage_type="SignIn", idempotent=True)
    expires: datetime = started.expire_time.ToDatetime()
    print(expires, started.send_count)
    try:
        checked = sms.check_verification(typed_code, verification_id=started.verification_id)
    except FailedPreconditionError as error:
        return error.reason == "VERIFICATION_APPROVED"
    remaining: int = checked.verification.checks_remaining
    pending = checked.verification.status == VerificationStatus.VERIFICATION_STATUS_PENDING
    print(remaining, pending)
    return checked.approved


def template_problems(sms: SmsClient) -> list[str]:
    report = sms.validate_template(usage_type="SignIn")
    problems: list[TemplateProblem] = list(report.problems)
    first = report.problems[0].reason if report.problems else ""
    return [first, *(f"{problem.reason}: {problem.message}" for problem in problems)]


async def send_async(target: str) -> str | None:
    async with AsyncSmsClient(target, default_timeout=5.0) as sms:
        try:
            sent = await sms.send_code("13800138000", "123456", idempotent=True)
        except SmsError as error:
            return None if error.delivery_unknown else error.reason
        return sent.message_id

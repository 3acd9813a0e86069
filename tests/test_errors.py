"""The error table: YunPian codes to reasons, reasons to gRPC statuses."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.statuses import ERROR_DOMAIN, STATUS_CODES, status_code, to_status_proto
from yunpian_sms_server.yunpian import provider_error

# The error table, row by row: YunPian code -> (reason, retry delay in seconds or None).
DESIGN_TABLE: dict[int, tuple[Reason, float | None]] = {
    **dict.fromkeys((5, 7, 60), (Reason.PROVIDER_TEMPLATE_REJECTED, None)),
    **dict.fromkeys((15, 16, 18, -57), (Reason.PROVIDER_SIGNATURE_REJECTED, None)),
    **dict.fromkeys((20, 23), (Reason.PROVIDER_REGION_NOT_SUPPORTED, None)),
    3: (Reason.PROVIDER_INSUFFICIENT_BALANCE, None),
    **dict.fromkeys((-1, -2, -3), (Reason.PROVIDER_AUTH_FAILED, None)),
    **dict.fromkeys((13, 27, 40, 55, -11, -62), (Reason.PROVIDER_ACCOUNT_ERROR, None)),
    **dict.fromkeys((4, 52), (Reason.PROVIDER_CONTENT_BLOCKED, None)),
    10: (Reason.PROVIDER_RECIPIENT_BLOCKED, None),
    56: (Reason.PROVIDER_PHONE_REJECTED, None),
    **dict.fromkeys((8, 33), (Reason.PROVIDER_RATE_LIMITED, 30.0)),
    9: (Reason.PROVIDER_RATE_LIMITED, 300.0),
    **dict.fromkeys((22, 53), (Reason.PROVIDER_RATE_LIMITED, 3600.0)),
    **dict.fromkeys((17, 43), (Reason.PROVIDER_RATE_LIMITED, 86400.0)),
    **dict.fromkeys((-4, -5), (Reason.PROVIDER_QUOTA_EXCEEDED, 60.0)),
    **dict.fromkeys((-50, -51, -53), (Reason.PROVIDER_UNAVAILABLE, None)),
    **dict.fromkeys(
        (1, 11, 12, 14, 19, 21, 48, 58, 28, -7), (Reason.PROVIDER_REJECTED_REQUEST, None)
    ),
}
EXPECTED_CODES = {
    Reason.PROVIDER_TEMPLATE_REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_SIGNATURE_REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_REGION_NOT_SUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_INSUFFICIENT_BALANCE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_AUTH_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_ACCOUNT_ERROR: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_CONTENT_BLOCKED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_RECIPIENT_BLOCKED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_PHONE_REJECTED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.PROVIDER_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_REJECTED_REQUEST: grpc.StatusCode.INTERNAL,
}


@pytest.mark.parametrize(("yunpian_code", "expected"), sorted(DESIGN_TABLE.items()))
def test_provider_error_follows_the_design_table(
    yunpian_code: int, expected: tuple[Reason, float | None]
) -> None:
    reason, delay = expected
    error = provider_error(yunpian_code, "msg", "detail", "138****8000")
    assert error.reason is reason
    assert status_code(error) is EXPECTED_CODES[reason]
    assert error.retry_after_s == delay
    assert error.metadata["yunpian_code"] == str(yunpian_code)
    assert error.yunpian_code == yunpian_code


def test_code_2_about_the_mobile_is_a_phone_rejection_with_a_field_violation() -> None:
    error = provider_error(2, "请求参数格式错误", "参数 mobile 格式不正确，mobile:189****4497", "x")
    assert error.reason is Reason.PROVIDER_PHONE_REJECTED
    assert error.field_violation is not None
    assert error.field_violation.field == "phone_number"


def test_code_2_about_another_parameter_is_our_own_malformed_request() -> None:
    error = provider_error(2, "请求参数格式错误", "参数 text 格式不正确", "x")
    assert error.reason is Reason.PROVIDER_REJECTED_REQUEST


def test_every_reason_has_a_status_code() -> None:
    assert set(STATUS_CODES) == set(Reason)


def test_status_proto_carries_error_info_and_the_named_details() -> None:
    error = provider_error(33, "", "号码：137****7729, 超过频率", "137****7729")
    status = to_status_proto(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.ErrorInfo()
    retry = error_details_pb2.RetryInfo()
    quota = error_details_pb2.QuotaFailure()
    assert [
        detail.Unpack(m) for detail, m in zip(status.details, (info, retry, quota), strict=True)
    ]
    assert (info.domain, info.reason) == (ERROR_DOMAIN, "PROVIDER_RATE_LIMITED")
    assert info.metadata["yunpian_code"] == "33"
    assert retry.retry_delay.seconds == 30
    assert quota.violations[0].subject == "137****7729"


def test_status_proto_of_a_plain_error_has_only_error_info() -> None:
    status = to_status_proto(ServiceError(Reason.SHUTTING_DOWN, "Bye."))
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status.message == "Bye."
    assert len(status.details) == 1

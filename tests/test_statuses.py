"""The one table from domain errors to gRPC statuses (statuses.py), and the rich status each
error becomes: ErrorInfo first, then the details it carries, every text bounded."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from yunpian_sms_server.errors import (
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_CHARS,
    FieldViolation,
    PreconditionViolation,
    QuotaViolation,
    Reason,
    ServiceError,
)
from yunpian_sms_server.statuses import (
    ERROR_DOMAIN,
    STATUS_CODES,
    to_grpc_status,
    to_status_proto,
)
from yunpian_sms_server.yunpian import provider_error


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


def test_status_proto_carries_bad_request_and_precondition_failure_after_error_info() -> None:
    error = ServiceError(
        Reason.INTERNATIONAL_DISABLED,
        "No.",
        field_violation=FieldViolation("phone_number", "not here"),
        precondition=PreconditionViolation("INTERNATIONAL", "US", "disabled"),
        retry_after_s=1.5,
    )
    status = to_status_proto(error)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    failure = error_details_pb2.PreconditionFailure()
    retry = error_details_pb2.RetryInfo()
    unpacked = [
        d.Unpack(m) for d, m in zip(status.details, (info, bad, failure, retry), strict=True)
    ]
    assert all(unpacked)
    assert (bad.field_violations[0].field, bad.field_violations[0].description) == (
        "phone_number",
        "not here",
    )
    assert (failure.violations[0].type, failure.violations[0].subject) == ("INTERNATIONAL", "US")
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


def test_every_text_of_a_status_is_bounded_so_it_fits_in_the_trailers() -> None:
    huge = "验" * 100_000
    error = ServiceError(
        Reason.PROVIDER_RATE_LIMITED,
        huge,
        metadata={"yunpian_detail": huge},
        field_violation=FieldViolation("phone_number", huge),
        precondition=PreconditionViolation("T", "S", huge),
        quota=QuotaViolation("138****8000", huge),
    )
    status = to_status_proto(error)
    assert len(status.message) == MAX_MESSAGE_CHARS
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    failure = error_details_pb2.PreconditionFailure()
    quota = error_details_pb2.QuotaFailure()
    for detail, message in zip(status.details, (info, bad, failure, quota), strict=True):
        assert detail.Unpack(message)
    texts = [
        info.metadata["yunpian_detail"],
        bad.field_violations[0].description,
        failure.violations[0].description,
        quota.violations[0].description,
    ]
    assert [len(text) for text in texts] == [MAX_DETAIL_CHARS] * 4
    assert all(text.endswith("…") for text in [status.message, *texts])


def test_the_grpc_status_packs_the_status_proto_into_the_details_trailer() -> None:
    error = ServiceError(Reason.STORE_UNAVAILABLE, "Store down.", metadata={"operation": "claim"})
    status = to_grpc_status(error)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert status.details == "Store down."
    [(key, packed)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert packed == to_status_proto(error).SerializeToString()

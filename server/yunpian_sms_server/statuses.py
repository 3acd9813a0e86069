"""The one table from domain errors to gRPC statuses, and the rich status each error becomes.

`to_grpc_status` builds the `google.rpc.Status` of a `ServiceError` (an ErrorInfo, then the
BadRequest, PreconditionFailure, RetryInfo and QuotaFailure details it carries), every text
bounded so the status always fits in gRPC's trailers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from yunpian_sms_server.errors import MAX_MESSAGE_CHARS, Reason, ServiceError, bounded

ERROR_DOMAIN: Final = "yunpian.sms.v1"

_C = grpc.StatusCode
# The one table: each reason's gRPC status code.
STATUS_CODES: Final[Mapping[Reason, grpc.StatusCode]] = {
    Reason.INVALID_PHONE_NUMBER: _C.INVALID_ARGUMENT,
    Reason.INVALID_CODE: _C.INVALID_ARGUMENT,
    Reason.INVALID_USAGE_TYPE: _C.INVALID_ARGUMENT,
    Reason.INVALID_REQUEST_ID: _C.INVALID_ARGUMENT,
    Reason.INVALID_TEMPLATE: _C.INVALID_ARGUMENT,
    # The request's bytes are not a message of the RPC's type (or a string is not UTF-8).
    Reason.MALFORMED_REQUEST: _C.INVALID_ARGUMENT,
    Reason.REQUEST_ID_REUSED: _C.INVALID_ARGUMENT,
    # The first call holding the request_id has not finished in this call's time: retry it.
    Reason.REQUEST_ID_IN_PROGRESS: _C.UNAVAILABLE,
    Reason.INTERNATIONAL_DISABLED: _C.FAILED_PRECONDITION,
    Reason.REGION_NOT_ALLOWED: _C.FAILED_PRECONDITION,
    Reason.TEMPLATE_NOT_CONFIGURED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_TEMPLATE_REJECTED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_SIGNATURE_REJECTED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_REGION_NOT_SUPPORTED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_INSUFFICIENT_BALANCE: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_AUTH_FAILED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_ACCOUNT_ERROR: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_CONTENT_BLOCKED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_RECIPIENT_BLOCKED: _C.FAILED_PRECONDITION,
    Reason.PROVIDER_PHONE_REJECTED: _C.INVALID_ARGUMENT,
    Reason.PROVIDER_RATE_LIMITED: _C.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_QUOTA_EXCEEDED: _C.RESOURCE_EXHAUSTED,
    Reason.RATE_LIMITED: _C.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_UNAVAILABLE: _C.UNAVAILABLE,
    Reason.PROVIDER_UNREACHABLE: _C.UNAVAILABLE,
    Reason.PROVIDER_TIMEOUT: _C.DEADLINE_EXCEEDED,
    Reason.PROVIDER_CONNECTION_LOST: _C.UNKNOWN,
    Reason.PROVIDER_BAD_RESPONSE: _C.UNKNOWN,
    Reason.PROVIDER_REJECTED_REQUEST: _C.INTERNAL,
    Reason.STORE_UNAVAILABLE: _C.UNAVAILABLE,
    Reason.UNAUTHENTICATED: _C.UNAUTHENTICATED,
    Reason.PERMISSION_DENIED: _C.PERMISSION_DENIED,
    Reason.SHUTTING_DOWN: _C.UNAVAILABLE,
    Reason.INVALID_VERIFICATION_ID: _C.INVALID_ARGUMENT,
    Reason.INVALID_VERIFICATION_TARGET: _C.INVALID_ARGUMENT,
    Reason.VERIFICATION_DISABLED: _C.FAILED_PRECONDITION,
    Reason.VERIFICATION_NOT_FOUND: _C.NOT_FOUND,
    # A check on a verification that has ended: the caller tells its user what to do.
    Reason.VERIFICATION_EXPIRED: _C.FAILED_PRECONDITION,
    Reason.VERIFICATION_CANCELED: _C.FAILED_PRECONDITION,
    Reason.VERIFICATION_APPROVED: _C.FAILED_PRECONDITION,
    Reason.VERIFICATION_MAX_ATTEMPTS: _C.FAILED_PRECONDITION,
    Reason.VERIFICATION_SEND_LIMIT: _C.RESOURCE_EXHAUSTED,
    Reason.INVALID_MESSAGE_ID: _C.INVALID_ARGUMENT,
    Reason.MESSAGE_NOT_FOUND: _C.NOT_FOUND,
    Reason.DELIVERY_REPORTS_DISABLED: _C.FAILED_PRECONDITION,
    Reason.INTERNAL_ERROR: _C.INTERNAL,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The gRPC status code of an error's reason."""
    return STATUS_CODES[error.reason]


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status_proto(error: ServiceError) -> status_pb2.Status:
    """Builds the google.rpc.Status of an error: ErrorInfo first, then the detail messages.

    Every text is bounded, so the status always fits in gRPC's trailers.
    """
    code = STATUS_CODES[error.reason]
    metadata = {key: bounded(value) for key, value in error.metadata.items()}
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason.value, domain=ERROR_DOMAIN, metadata=metadata
        )
    ]
    if error.field_violation is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field_violation.field,
            description=bounded(error.field_violation.description),
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.precondition is not None:
        failure = error_details_pb2.PreconditionFailure.Violation(
            type=error.precondition.type,
            subject=error.precondition.subject,
            description=bounded(error.precondition.description),
        )
        details.append(error_details_pb2.PreconditionFailure(violations=[failure]))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if error.quota is not None:
        quota = error_details_pb2.QuotaFailure.Violation(
            subject=error.quota.subject, description=bounded(error.quota.description)
        )
        details.append(error_details_pb2.QuotaFailure(violations=[quota]))
    return status_pb2.Status(
        code=code.value[0],
        message=bounded(error.message, MAX_MESSAGE_CHARS),
        details=[_packed(detail) for detail in details],
    )


def to_grpc_status(error: ServiceError) -> grpc.Status:
    """The grpc.Status to abort an RPC with: code, message and the rich details trailer."""
    status: grpc.Status = rpc_status.to_status(to_status_proto(error))
    return status

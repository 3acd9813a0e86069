"""Domain errors of the service and the one table that turns them into gRPC statuses.

Handlers raise `ServiceError`; `to_grpc_status` builds the `google.rpc.Status` (with ErrorInfo
and the detail messages each reason carries) in one place. YunPian's answer codes map here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN: Final = "yunpian.sms.v1"
# Metadata value saying an SMS may have been sent although the call failed.
DELIVERY_UNKNOWN: Final = "unknown"
# How long a caller should wait after YunPian's per-key quota refusals (-4, -5).
PROVIDER_QUOTA_RETRY_S: Final = 60.0
# Longest text kept of a status's message and of each detail value (metadata, descriptions):
# gRPC refuses trailers over a few kilobytes, and would then lose the whole status.
MAX_MESSAGE_CHARS: Final = 512
MAX_DETAIL_CHARS: Final = 256
_ELLIPSIS: Final = "…"


class Reason(StrEnum):
    """The ErrorInfo reasons: each names one condition a caller can act on."""

    INVALID_PHONE_NUMBER = "INVALID_PHONE_NUMBER"
    INVALID_CODE = "INVALID_CODE"
    INVALID_USAGE_TYPE = "INVALID_USAGE_TYPE"
    INVALID_REQUEST_ID = "INVALID_REQUEST_ID"
    INVALID_TEMPLATE = "INVALID_TEMPLATE"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    REQUEST_ID_IN_PROGRESS = "REQUEST_ID_IN_PROGRESS"
    INTERNATIONAL_DISABLED = "INTERNATIONAL_DISABLED"
    REGION_NOT_ALLOWED = "REGION_NOT_ALLOWED"
    TEMPLATE_NOT_CONFIGURED = "TEMPLATE_NOT_CONFIGURED"
    PROVIDER_TEMPLATE_REJECTED = "PROVIDER_TEMPLATE_REJECTED"
    PROVIDER_SIGNATURE_REJECTED = "PROVIDER_SIGNATURE_REJECTED"
    PROVIDER_REGION_NOT_SUPPORTED = "PROVIDER_REGION_NOT_SUPPORTED"
    PROVIDER_INSUFFICIENT_BALANCE = "PROVIDER_INSUFFICIENT_BALANCE"
    PROVIDER_AUTH_FAILED = "PROVIDER_AUTH_FAILED"
    PROVIDER_ACCOUNT_ERROR = "PROVIDER_ACCOUNT_ERROR"
    PROVIDER_CONTENT_BLOCKED = "PROVIDER_CONTENT_BLOCKED"
    PROVIDER_RECIPIENT_BLOCKED = "PROVIDER_RECIPIENT_BLOCKED"
    PROVIDER_PHONE_REJECTED = "PROVIDER_PHONE_REJECTED"
    PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
    PROVIDER_QUOTA_EXCEEDED = "PROVIDER_QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_UNREACHABLE = "PROVIDER_UNREACHABLE"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_CONNECTION_LOST = "PROVIDER_CONNECTION_LOST"
    PROVIDER_BAD_RESPONSE = "PROVIDER_BAD_RESPONSE"
    PROVIDER_REJECTED_REQUEST = "PROVIDER_REJECTED_REQUEST"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"


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
    Reason.INTERNAL_ERROR: _C.INTERNAL,
}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A request field that is wrong, and why (google.rpc.BadRequest)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """A precondition that failed (google.rpc.PreconditionFailure)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """A quota that was exhausted (google.rpc.QuotaFailure)."""

    subject: str
    description: str


class ServiceError(Exception):
    """A failure the caller is told about, with the reason that picks its gRPC status.

    `message` must never hold the API key or the verification code, and phone numbers in it
    must already be masked: it is sent to the caller and logged.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violation: FieldViolation | None = None,
        precondition: PreconditionViolation | None = None,
        quota: QuotaViolation | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violation = field_violation
        self.precondition = precondition
        self.quota = quota
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code of this error's reason."""
        return STATUS_CODES[self.reason]

    @property
    def yunpian_code(self) -> int | None:
        """YunPian's answer code, where YunPian answered."""
        raw = self.metadata.get("yunpian_code")
        return int(raw) if raw is not None else None

    @property
    def delivery_unknown(self) -> bool:
        """Whether an SMS may have been sent although the call failed."""
        return self.metadata.get("delivery") == DELIVERY_UNKNOWN


def invalid_argument(reason: Reason, field_name: str, message: str) -> ServiceError:
    """An INVALID_ARGUMENT error naming the proto field at fault."""
    return ServiceError(reason, message, field_violation=FieldViolation(field_name, message))


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """The text, cut to at most `limit` characters (the cut marked with an ellipsis)."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


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


# --- YunPian's answer codes (its API's error code table) ---------------------------------

_PROVIDER_REASONS: Final[Mapping[int, Reason]] = {
    **dict.fromkeys((5, 7, 60), Reason.PROVIDER_TEMPLATE_REJECTED),
    **dict.fromkeys((15, 16, 18, -57), Reason.PROVIDER_SIGNATURE_REJECTED),
    **dict.fromkeys((20, 23), Reason.PROVIDER_REGION_NOT_SUPPORTED),
    3: Reason.PROVIDER_INSUFFICIENT_BALANCE,
    **dict.fromkeys((-1, -2, -3), Reason.PROVIDER_AUTH_FAILED),
    **dict.fromkeys((13, 27, 40, 55, -11, -62), Reason.PROVIDER_ACCOUNT_ERROR),
    **dict.fromkeys((4, 52), Reason.PROVIDER_CONTENT_BLOCKED),
    10: Reason.PROVIDER_RECIPIENT_BLOCKED,
    56: Reason.PROVIDER_PHONE_REJECTED,
    **dict.fromkeys((8, 33, 9, 22, 53, 17, 43), Reason.PROVIDER_RATE_LIMITED),
    **dict.fromkeys((-4, -5), Reason.PROVIDER_QUOTA_EXCEEDED),
    **dict.fromkeys((-50, -51, -53), Reason.PROVIDER_UNAVAILABLE),
}
# How long YunPian's per-number limits make a caller wait, by answer code.
PROVIDER_RETRY_DELAYS_S: Final[Mapping[int, float]] = {
    **dict.fromkeys((8, 33), 30.0),
    9: 300.0,
    **dict.fromkeys((22, 53), 3600.0),
    **dict.fromkeys((17, 43), 86400.0),
    **dict.fromkeys((-4, -5), PROVIDER_QUOTA_RETRY_S),
}
# YunPian's "parameter format wrong" is about the phone number when its detail names `mobile`.
_PARAMETER_FORMAT_WRONG: Final = 2
_MESSAGES: Final[Mapping[Reason, str]] = {
    Reason.PROVIDER_TEMPLATE_REJECTED: "YunPian has no approved template matching the SMS text.",
    Reason.PROVIDER_SIGNATURE_REJECTED: "YunPian refused the SMS signature.",
    Reason.PROVIDER_REGION_NOT_SUPPORTED: "YunPian cannot send to this number's region.",
    Reason.PROVIDER_INSUFFICIENT_BALANCE: "The YunPian account balance is insufficient.",
    Reason.PROVIDER_AUTH_FAILED: "YunPian refused the API key or the caller's IP address.",
    Reason.PROVIDER_ACCOUNT_ERROR: "The YunPian account cannot send this SMS.",
    Reason.PROVIDER_CONTENT_BLOCKED: "YunPian blocked the SMS content.",
    Reason.PROVIDER_RECIPIENT_BLOCKED: "YunPian blocked the recipient's number.",
    Reason.PROVIDER_PHONE_REJECTED: "YunPian refused the phone number.",
    Reason.PROVIDER_RATE_LIMITED: "YunPian's per-number sending limit was reached.",
    Reason.PROVIDER_QUOTA_EXCEEDED: "YunPian's API call quota was exceeded.",
    Reason.PROVIDER_UNAVAILABLE: "YunPian is temporarily unavailable.",
    Reason.PROVIDER_REJECTED_REQUEST: "YunPian rejected the request as malformed.",
}


def provider_error(yunpian_code: int, yunpian_msg: str, detail: str, subject: str) -> ServiceError:
    """Maps a YunPian error answer to its ServiceError.

    `yunpian_msg` and `detail` must already have their phone numbers masked; `subject` is the
    masked number the call was about (it names the exhausted quota).
    """
    yunpian_msg, detail = bounded(yunpian_msg), bounded(detail)
    reason = _PROVIDER_REASONS.get(yunpian_code, Reason.PROVIDER_REJECTED_REQUEST)
    if yunpian_code == _PARAMETER_FORMAT_WRONG and "mobile" in detail:
        reason = Reason.PROVIDER_PHONE_REJECTED
    message = f"{_MESSAGES[reason][:-1]} (YunPian code {yunpian_code})."
    metadata = {"yunpian_code": str(yunpian_code), "yunpian_msg": yunpian_msg}
    if detail:
        metadata["yunpian_detail"] = detail
    retry_after = PROVIDER_RETRY_DELAYS_S.get(yunpian_code)
    if reason is Reason.PROVIDER_PHONE_REJECTED:
        return ServiceError(
            reason,
            message,
            metadata=metadata,
            field_violation=FieldViolation("phone_number", detail or yunpian_msg or message),
        )
    quota = None
    if reason is Reason.PROVIDER_RATE_LIMITED:
        quota = QuotaViolation(subject, detail or yunpian_msg or message)
    return ServiceError(reason, message, metadata=metadata, quota=quota, retry_after_s=retry_after)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in the configuration: where, and what."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


@dataclass
class ConfigError(Exception):
    """The configuration is invalid; every problem found is listed."""

    problems: list[ConfigProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)


class ListenError(Exception):
    """An address a listener cannot have: in use by another process, not this machine's, …

    `cli` turns it into one line on stderr and exit status 2, never a traceback.
    """

    def __init__(self, address: str, listener: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({listener}): {reason}")
        self.address = address
        self.listener = listener
        self.reason = reason

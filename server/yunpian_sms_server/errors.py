"""Domain errors: a `ServiceError` names the condition (its `Reason`) and what the caller needs.

The rules of the service raise them; statuses.py turns them into gRPC statuses, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Metadata value saying an SMS may have been sent although the call failed.
DELIVERY_UNKNOWN: Final = "unknown"
# Longest text kept of a status's message and of each detail value (metadata, descriptions):
# gRPC refuses trailers over a few kilobytes, and would then lose the whole status.
MAX_MESSAGE_CHARS: Final = 512
MAX_DETAIL_CHARS: Final = 256
_ELLIPSIS: Final = "…"


class Reason(StrEnum):
    """The ErrorInfo reasons: each names one condition a caller can act on (its gRPC status code
    is in statuses.py)."""

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
    INVALID_VERIFICATION_ID = "INVALID_VERIFICATION_ID"
    INVALID_VERIFICATION_TARGET = "INVALID_VERIFICATION_TARGET"
    VERIFICATION_DISABLED = "VERIFICATION_DISABLED"
    VERIFICATION_NOT_FOUND = "VERIFICATION_NOT_FOUND"
    VERIFICATION_EXPIRED = "VERIFICATION_EXPIRED"
    VERIFICATION_CANCELED = "VERIFICATION_CANCELED"
    VERIFICATION_APPROVED = "VERIFICATION_APPROVED"
    VERIFICATION_MAX_ATTEMPTS = "VERIFICATION_MAX_ATTEMPTS"
    VERIFICATION_SEND_LIMIT = "VERIFICATION_SEND_LIMIT"
    INVALID_MESSAGE_ID = "INVALID_MESSAGE_ID"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    DELIVERY_REPORTS_DISABLED = "DELIVERY_REPORTS_DISABLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


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
    def yunpian_code(self) -> int | None:
        """YunPian's answer code, where YunPian answered."""
        raw = self.metadata.get("yunpian_code")
        return int(raw) if raw is not None else None

    @property
    def replayed(self) -> bool:
        """Whether this is a recorded outcome answered again: nothing was sent this time."""
        return self.metadata.get("replayed") == "true"

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

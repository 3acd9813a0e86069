"""The SDK's exception tree: one class per gRPC status family, built from a call's rich status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Final

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

# The trailer that carries the serialized google.rpc.Status (the gRPC richer error model).
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
# ErrorInfo metadata keys the service sets.
_YUNPIAN_CODE_KEY: Final = "yunpian_code"
_DELIVERY_KEY: Final = "delivery"
_DELIVERY_UNKNOWN: Final = "unknown"


class SmsError(Exception):
    """An RPC to the yunpian-sms service failed.

    Catch this to handle every failure, or a subclass to handle one status family. The fields
    come from the call's status and its `google.rpc` details; a field the server did not send
    is empty (or None).

    Attributes:
        code: The gRPC status code.
        message: The status message, a short English sentence.
        reason: The `ErrorInfo` reason, e.g. "INVALID_PHONE_NUMBER"; "" when there is none
            (for example when the deadline expired on the client).
        domain: The `ErrorInfo` domain, "yunpian.sms.v1" for the service's own errors.
        metadata: The `ErrorInfo` metadata, e.g. {"yunpian_code": "33", "yunpian_msg": "..."}.
        retry_delay: Seconds to wait before retrying, from `google.rpc.RetryInfo`, or None.
        field_violations: (field, description) pairs from `google.rpc.BadRequest`.
        details: Every detail message of the status, unpacked where the type is known
            (ErrorInfo, RetryInfo, BadRequest, QuotaFailure, PreconditionFailure), else the
            `google.protobuf.Any` as received.
        delivery_unknown: True when an SMS may have been sent although the call failed, so
            sending again without the same request_id may deliver a second SMS.
    """

    #: The status code of errors of this class built without an explicit code.
    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: Mapping[str, str]
    retry_delay: float | None
    field_violations: tuple[tuple[str, str], ...]
    details: tuple[Message, ...]
    delivery_unknown: bool

    def __init__(
        self,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        details: Iterable[Message] = (),
        delivery_unknown: bool | None = None,
    ) -> None:
        """Builds an error; `delivery_unknown=None` reads it from metadata["delivery"]."""
        self.code = self.default_code if code is None else code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = MappingProxyType(dict(metadata or {}))
        self.retry_delay = retry_delay
        self.field_violations = tuple(field_violations)
        self.details = tuple(details)
        if delivery_unknown is None:
            delivery_unknown = self.metadata.get(_DELIVERY_KEY) == _DELIVERY_UNKNOWN
        self.delivery_unknown = delivery_unknown
        super().__init__(self._describe())

    @property
    def yunpian_code(self) -> int | None:
        """YunPian's own error code (`ErrorInfo` metadata "yunpian_code"), or None."""
        raw = self.metadata.get(_YUNPIAN_CODE_KEY)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            return None

    @property
    def retryable(self) -> bool:
        """Whether the service did nothing and the same call may simply be made again.

        True for UNAVAILABLE. A `send_code` or `start_verification` should still only be
        repeated with the same `request_id`: a transport failure can hide whether the first
        attempt arrived.
        """
        return self.code is grpc.StatusCode.UNAVAILABLE and not self.delivery_unknown

    def _describe(self) -> str:
        # "INVALID_ARGUMENT INVALID_PHONE_NUMBER: The phone number is not valid."
        head = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{head}: {self.message}" if self.message else head


class CallCancelledError(SmsError):
    """The call was cancelled (CANCELLED), e.g. because the client was closed during it.

    Not related to `asyncio.CancelledError`, which the async client lets propagate untouched.
    """

    default_code = grpc.StatusCode.CANCELLED


class UnknownError(SmsError):
    """The outcome is unknown (UNKNOWN); check `delivery_unknown` before sending again."""

    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(SmsError):
    """The request is malformed (INVALID_ARGUMENT); `field_violations` names the fields.

    Reasons include INVALID_PHONE_NUMBER, INVALID_CODE (for `check_verification`: not the
    service's code_length digits; no check was used), INVALID_USAGE_TYPE, INVALID_REQUEST_ID,
    REQUEST_ID_REUSED, INVALID_VERIFICATION_ID (not an id `start_verification` returned) and
    INVALID_VERIFICATION_TARGET (a check naming no verification) and INVALID_MESSAGE_ID (for
    `get_delivery_status`: not the decimal message id a send returned).
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(SmsError):
    """The deadline expired (DEADLINE_EXCEEDED), on the client or at the service.

    After `send_code` an SMS may have been sent; `delivery_unknown` says so.
    """

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(SmsError):
    """Something the call refers to does not exist (NOT_FOUND).

    VERIFICATION_NOT_FOUND: no verification of this caller has that id (unknown, another
    caller's, or forgotten after it ended), or the number has no pending verification of that
    usage type. Start a new one.

    MESSAGE_NOT_FOUND: no SMS of this caller has that message id (unknown, another caller's, or
    sent longer ago than the server keeps its record: twice its report wait).
    """

    default_code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(SmsError):
    """The caller may not make this call (PERMISSION_DENIED)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(SmsError):
    """A rate limit or quota was reached (RESOURCE_EXHAUSTED); see `retry_delay`.

    Reasons: RATE_LIMITED (the service's limits), PROVIDER_RATE_LIMITED and
    PROVIDER_QUOTA_EXCEEDED (YunPian's), VERIFICATION_SEND_LIMIT (the verification has had all
    its SMS; `retry_delay` lasts until it expires, when a new one may start).
    """

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SmsError):
    """The service or YunPian refuses the request as it stands (FAILED_PRECONDITION).

    Retrying does not help until the configuration, the account or the template changes. For
    verifications: VERIFICATION_DISABLED (the server does not run them), and, on a check of a
    verification that has ended, VERIFICATION_EXPIRED, VERIFICATION_CANCELED,
    VERIFICATION_APPROVED (a code works once) or VERIFICATION_MAX_ATTEMPTS (every check used);
    then start a new verification. `metadata` carries its "verification_id" and "status".
    For delivery reports: DELIVERY_REPORTS_DISABLED (the server collects none; its `[delivery]`
    mode is off).
    """

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(SmsError):
    """The server does not implement this RPC (UNIMPLEMENTED)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SmsError):
    """The service failed, or YunPian rejected a request the service built (INTERNAL)."""

    default_code = grpc.StatusCode.INTERNAL


class UnavailableError(SmsError):
    """The service or YunPian cannot be reached right now (UNAVAILABLE); safe to retry."""

    default_code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(SmsError):
    """The call carries no valid credentials (UNAUTHENTICATED)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


# Codes the service, the gRPC runtime or a proxy in between can return. The rest (ABORTED,
# ALREADY_EXISTS, OUT_OF_RANGE, DATA_LOSS) are never produced for this API; should one
# arrive anyway it becomes a plain SmsError, which still carries the code.
_ERROR_CLASSES: Final[Mapping[grpc.StatusCode, type[SmsError]]] = MappingProxyType(
    {
        cls.default_code: cls
        for cls in (
            CallCancelledError,
            UnknownError,
            InvalidArgumentError,
            DeadlineExceededError,
            NotFoundError,
            PermissionDeniedError,
            ResourceExhaustedError,
            FailedPreconditionError,
            UnimplementedError,
            InternalError,
            UnavailableError,
            UnauthenticatedError,
        )
    }
)


def from_rpc_error(error: grpc.RpcError) -> SmsError:
    """Converts a failed gRPC call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`) to an SmsError.

    Reads the `grpc-status-details-bin` trailer (a serialized `google.rpc.Status`) and unpacks
    its ErrorInfo, RetryInfo, BadRequest, QuotaFailure and PreconditionFailure details.
    """
    return _from_rpc_error(error)


def _from_rpc_error(error: grpc.RpcError, *, sending: bool = False) -> SmsError:
    """Builds the SmsError of a failed call; `sending` marks a SendCode attempt."""
    trailers: Sequence[tuple[str, str | bytes]]
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
        trailers = _metadata_pairs(error.trailing_metadata())
    else:
        # A sync failure is both an RpcError and a grpc.Call; the stubs declare the two
        # incompatible, so look at it as a plain object to let isinstance find the Call.
        call: object = error
        if not isinstance(call, grpc.Call):
            # A bare RpcError carries no status at all; nothing better than UNKNOWN is known.
            return SmsError(str(error) or type(error).__name__, code=grpc.StatusCode.UNKNOWN)
        code, message = call.code(), call.details() or ""
        trailers = _metadata_pairs(call.trailing_metadata())
    status = _rich_status(code, trailers)
    if status is None:
        return _error_class(code)(
            message, code=code, delivery_unknown=_outcome_unknown(code, sending)
        )

    reason = domain = ""
    metadata: dict[str, str] = {}
    retry_delay: float | None = None
    violations: list[tuple[str, str]] = []
    details: list[Message] = []
    for packed in status.details:
        detail = _unpack(packed)
        details.append(detail)
        if isinstance(detail, error_details_pb2.ErrorInfo) and not reason:
            reason, domain, metadata = detail.reason, detail.domain, dict(detail.metadata)
        elif isinstance(detail, error_details_pb2.RetryInfo) and retry_delay is None:
            retry_delay = detail.retry_delay.ToTimedelta().total_seconds()
        elif isinstance(detail, error_details_pb2.BadRequest):
            violations.extend((v.field, v.description) for v in detail.field_violations)
    unknown: bool | None = None
    if not reason:
        # No ErrorInfo: the status did not come from the service's error table.
        unknown = _outcome_unknown(code, sending)
    return _error_class(code)(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_delay=retry_delay,
        field_violations=violations,
        details=details,
        delivery_unknown=unknown,
    )


def _metadata_pairs(metadata: Iterable[Any] | None) -> tuple[tuple[str, str | bytes], ...]:
    # Both runtimes yield (key, value) tuples (a grpc.aio.Metadata when iterated, the sync
    # runtime's _Metadatum namedtuples), whatever the stubs declare.
    return tuple((key, value) for key, value in metadata or ())


def _error_class(code: grpc.StatusCode) -> type[SmsError]:
    return _ERROR_CLASSES.get(code, SmsError)


def _outcome_unknown(code: grpc.StatusCode, sending: bool) -> bool:
    # Without the service's word on it, a SendCode that timed out, was cancelled or broke off
    # may have reached YunPian: the same uncertainty the service marks with delivery=unknown.
    return sending and code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    )


def _rich_status(
    code: grpc.StatusCode, trailers: Sequence[tuple[str, str | bytes]]
) -> status_pb2.Status | None:
    # Read by hand rather than with grpc_status.rpc_status.from_call: that one is typed for
    # sync calls only and raises on a mismatch, which would hide the original error.
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        # A status that disagrees with the call's code (e.g. one a proxy replaced) describes
        # some other failure: its details must not be attributed to this one.
        return status if status.code == code.value[0] else None
    return None


_KNOWN_DETAILS: Final[tuple[type[Message], ...]] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
)


def _unpack(packed: any_pb2.Any) -> Message:
    for detail_type in _KNOWN_DETAILS:
        detail = detail_type()
        # Unpack checks the type URL and answers False for another type.
        if packed.Unpack(detail):
            return detail
    return packed

"""The clients of the yunpian-sms service: AsyncSmsClient (grpc.aio) and SmsClient (blocking).

Both build their requests with the module's functions and differ only in how they wait: each
public method is a request built here and one `_call`, which retries by the same `CallAttempts`.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

from ._errors import CallCancelledError, _from_rpc_error
from ._retry import DEFAULT_RETRY_POLICY, CallAttempts, RetryPolicy

#: Deadline of a call, in seconds, when neither the call nor the client sets one. Long enough
#: for the service's own upstream timeout (5 s by default) plus a retry or two.
DEFAULT_TIMEOUT_S: Final = 10.0

_RequestT = TypeVar("_RequestT", bound=Message)
_ResponseT = TypeVar("_ResponseT", bound=Message)

# The configuration's and the command line's CamelCase names.
_USAGE_TYPE_NAMES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "SignIn": pb.USAGE_TYPE_SIGN_IN,
        "Register": pb.USAGE_TYPE_REGISTER,
        "ForgotPassword": pb.USAGE_TYPE_FORGOT_PASSWORD,
        "Generic": pb.USAGE_TYPE_GENERIC,
        "UserPermissionValidation": pb.USAGE_TYPE_USER_PERMISSION_VALIDATION,
        "BindNewIdentifier": pb.USAGE_TYPE_BIND_NEW_IDENTIFIER,
        "MfaVerification": pb.USAGE_TYPE_MFA_VERIFICATION,
        "BindMfa": pb.USAGE_TYPE_BIND_MFA,
    }
)
# Either spelling works: the CamelCase names and the proto's own ("USAGE_TYPE_SIGN_IN").
_USAGE_TYPES: Final[Mapping[str, int]] = MappingProxyType(
    dict(_USAGE_TYPE_NAMES) | dict(pb.UsageType.items())
)
_CLOSED_MESSAGE: Final = "The client is closed; create a new one to make more calls."


def new_request_id() -> str:
    """Returns a fresh idempotency key for `send_code` or `start_verification`: a random UUID4,
    as 32 hex digits.

    Make one per logical send and pass the same key to every retry of it, so that the service
    sends at most one SMS however often the call is repeated. (`idempotent=True` makes one
    itself, for the retries the client makes within that call.)
    """
    return uuid.uuid4().hex


class _ClientSettings:
    """What both clients share: the call defaults, the retry policy and whether it is closed."""

    def __init__(
        self,
        *,
        default_timeout: float,
        metadata: Sequence[tuple[str, str]],
        retry: RetryPolicy | None,
    ) -> None:
        self._default_timeout = _checked_timeout(default_timeout)
        self._metadata = tuple(metadata)
        self._retry = retry
        self._closed = False

    def _start(
        self, request: Message, timeout: float | None, metadata: Sequence[tuple[str, str]] | None
    ) -> tuple[CallAttempts, tuple[tuple[str, str], ...], bool]:
        """The attempts of a call about to be made, its metadata, and whether it sends an SMS.

        The one retry rule of both clients: a call that sends an SMS (SendCode,
        StartVerification) is retried after UNAVAILABLE only with a request_id, since only then
        does the service answer a repeat from its record instead of sending again; the others
        change nothing when they fail with UNAVAILABLE, so they are always retried.
        """
        if self._closed:
            raise RuntimeError(_CLOSED_MESSAGE)
        timeout = self._default_timeout if timeout is None else _checked_timeout(timeout)
        if isinstance(request, pb.SendCodeRequest | pb.StartVerificationRequest):
            sending, may_retry = True, bool(request.request_id)
        else:
            sending, may_retry = False, True
        attempts = CallAttempts(self._retry, timeout, may_retry=may_retry)
        return attempts, self._metadata + tuple(metadata or ()), sending


class AsyncSmsClient(_ClientSettings):
    """An asyncio client of the yunpian-sms service; owns its `grpc.aio` channel.

    Use it as `async with AsyncSmsClient("sms.internal:50051") as client: ...`, or call
    `await client.close()` when done. Create it inside the event loop that will use it.
    Failed calls raise `SmsError` subclasses, never a gRPC exception.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        retry: RetryPolicy | None = DEFAULT_RETRY_POLICY,
    ) -> None:
        """Opens a channel to `target` ("host:port"), with TLS when `credentials` are given.

        Args:
            target: The service's address, e.g. "127.0.0.1:50051" or "dns:///sms.internal:443".
            credentials: TLS (and call) credentials; None means a plaintext channel.
            default_timeout: Deadline, in seconds, of calls that pass no `timeout`.
            metadata: Metadata sent with every call, before the call's own.
            options: gRPC channel options, e.g. [("grpc.keepalive_time_ms", 30000)].
            retry: How to retry UNAVAILABLE calls; None never retries.
        """
        super().__init__(default_timeout=default_timeout, metadata=metadata, retry=retry)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=list(options))
        self._stub = pb_grpc.SmsServiceStub(self._channel)

    async def __aenter__(self) -> Self:
        """Returns the client itself; the channel is already open."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the client."""
        await self.close()

    async def close(self) -> None:
        """Closes the channel, cancelling calls still in flight; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close(None)

    async def send_code(
        self,
        phone_number: str,
        code: str,
        *,
        usage_type: pb.UsageType | int | str = pb.USAGE_TYPE_GENERIC,
        request_id: str | None = None,
        idempotent: bool = False,
        # The gRPC deadline of the call (the SDK's contract), not an asyncio cancel scope.
        timeout: float | None = None,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.SendCodeResponse:
        """Sends `code` by SMS to `phone_number`, with the template of `usage_type`.

        Args:
            phone_number: E.g. "+8613800138000", "13800138000" or "+14155552671".
            code: The verification code, 4 to 10 letters or digits.
            usage_type: A `UsageType` value, or its name: "SignIn", "Register",
                "ForgotPassword", "Generic", "UserPermissionValidation", "BindNewIdentifier",
                "MfaVerification", "BindMfa" (or the proto's, e.g. "USAGE_TYPE_SIGN_IN").
            request_id: Idempotency key (see `new_request_id`); only with one is the call
                retried after UNAVAILABLE, and is it safe to repeat after `delivery_unknown`.
            idempotent: When True and no `request_id` is given, the client makes one
                (`new_request_id()`) for this call alone, so that its retries after
                UNAVAILABLE reuse it and the service sends at most one SMS. To repeat the
                call yourself later (after `delivery_unknown`), pass your own `request_id`.
            timeout: Deadline of the whole call, retries included, in seconds; None uses the
                client's `default_timeout`.
            metadata: Metadata for this call, sent after the client's.

        Raises:
            ValueError: `usage_type` is not a known name.
            SmsError: The call failed; the subclass names the status family.
        """
        request = _send_code_request(phone_number, code, usage_type, request_id, idempotent)
        return await self._call(self._stub.SendCode, request, timeout, metadata)

    async def validate_template(
        self,
        *,
        usage_type: pb.UsageType | int | str | None = None,
        content: str | None = None,
        international: bool = False,
        skip_remote: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as in send_code
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.ValidateTemplateResponse:
        """Checks a template locally and against YunPian's approved templates.

        Pass exactly one of `usage_type` (check the template configured for it) and `content`
        (check this text, in {{code}} form). A read-only call: retried after UNAVAILABLE.

        Raises:
            ValueError: Neither or both of `usage_type` and `content`, or an unknown name.
            SmsError: The call failed; the subclass names the status family.
        """
        request = _validate_template_request(usage_type, content, international, skip_remote)
        return await self._call(self._stub.ValidateTemplate, request, timeout, metadata)

    async def start_verification(
        self,
        phone_number: str,
        *,
        usage_type: pb.UsageType | int | str = pb.USAGE_TYPE_GENERIC,
        request_id: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as in send_code
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.Verification:
        """Starts verifying `phone_number`: the service makes a code and sends it by SMS.

        While a verification of this caller, number and usage type is pending, the service
        sends it a new code instead ("resend": the same `verification_id`, `send_count` + 1,
        the same `expire_time`; every code sent stays valid until the verification ends).

        Args:
            phone_number: As `send_code` takes it, e.g. "13800138000" or "+14155552671".
            usage_type: What the verification is for, as `send_code` takes it; it selects the
                template, and a check by phone number must name the same one.
            request_id: Idempotency key, as for `send_code`: a repeat with it answers with the
                verification (`replayed` true) instead of sending again; only with one is the
                call retried after UNAVAILABLE.
            idempotent: When True and no `request_id` is given, the client makes one for this
                call alone, which its retries reuse.
            timeout: Deadline of the whole call, retries included, in seconds.
            metadata: Metadata for this call, sent after the client's.

        Returns:
            The verification: `verification_id` (keep it for the check), `status` PENDING,
            `send_count`, `checks_remaining`, `expire_time`, `message_id`, `replayed`.

        Raises:
            ValueError: `usage_type` is not a known name.
            SmsError: The errors of `send_code` (a start is a send, under the same rate limits);
                `ResourceExhaustedError` VERIFICATION_SEND_LIMIT when the verification has had
                all its SMS (`retry_delay`: until it expires); `FailedPreconditionError`
                VERIFICATION_DISABLED when the server does not run verifications.
        """
        request = _start_verification_request(phone_number, usage_type, request_id, idempotent)
        return await self._call(self._stub.StartVerification, request, timeout, metadata)

    async def check_verification(
        self,
        code: str,
        *,
        verification_id: str | None = None,
        phone_number: str | None = None,
        usage_type: pb.UsageType | int | str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as in send_code
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.CheckVerificationResponse:
        """Checks the code the user typed against a verification; uses one of its checks.

        Name the verification by exactly one of `verification_id` (what `start_verification`
        returned) and `phone_number` (this caller's pending verification of that number and
        `usage_type`). A wrong code is an answer, not an error: `approved` is False and
        `verification.checks_remaining` says how many tries are left (none, and status
        MAX_ATTEMPTS_REACHED, after the last). A right one approves the verification, once.
        Retried after UNAVAILABLE: a refused check uses no try, and a retry never sends an SMS
        (should a connection break after the service approved, the retry answers
        VERIFICATION_APPROVED).

        Args:
            code: The code the user typed: the service's code_length digits, e.g. "482915".
            verification_id: The verification's id.
            phone_number: Or the number it verifies, as `start_verification` took it.
            usage_type: With `phone_number` only: the verification's usage type (default
                Generic), as `send_code` takes it.
            timeout: Deadline of the whole call, retries included, in seconds.
            metadata: Metadata for this call, sent after the client's.

        Raises:
            ValueError: Neither or both of `verification_id` and `phone_number`, a `usage_type`
                with `verification_id`, or an unknown usage type name.
            SmsError: `NotFoundError` VERIFICATION_NOT_FOUND (no such verification of this
                caller, or no pending one of the number); `FailedPreconditionError`
                VERIFICATION_EXPIRED, VERIFICATION_CANCELED, VERIFICATION_APPROVED or
                VERIFICATION_MAX_ATTEMPTS (it has ended: start a new one);
                `InvalidArgumentError` INVALID_CODE (not code_length digits: no check used),
                INVALID_VERIFICATION_ID, INVALID_PHONE_NUMBER.
        """
        request = _check_verification_request(code, verification_id, phone_number, usage_type)
        return await self._call(self._stub.CheckVerification, request, timeout, metadata)

    async def cancel_verification(
        self,
        verification_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as in send_code
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.Verification:
        """Cancels a pending verification: no code of it is accepted any more.

        Returns the verification as it stands: status CANCELED, or, for one that had already
        ended, its status unchanged. Retried after UNAVAILABLE.

        Raises:
            SmsError: `NotFoundError` VERIFICATION_NOT_FOUND (no such verification of this
                caller); `InvalidArgumentError` INVALID_VERIFICATION_ID.
        """
        request = pb.CancelVerificationRequest(verification_id=verification_id)
        return await self._call(self._stub.CancelVerification, request, timeout, metadata)

    async def get_delivery_status(
        self,
        message_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as in send_code
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.DeliveryStatus:
        """Says whether an SMS this caller sent reached the phone, from YunPian's delivery report.

        A read-only call: retried after UNAVAILABLE. Every state is an answer, not an error:
        `state` PENDING (no report yet), DELIVERED, FAILED (`carrier_code` and `carrier_detail`
        say why) or UNKNOWN (no report came within the time YunPian keeps them).

        Args:
            message_id: The `message_id` that `send_code` or `start_verification` returned
                (YunPian's sid, a decimal string), e.g. "76815478050".
            timeout: Deadline of the whole call, retries included, in seconds.
            metadata: Metadata for this call, sent after the client's.

        Returns:
            The `DeliveryStatus`: `message_id`, `state`, `carrier_code`, `carrier_detail`,
            `send_time`, and `receive_time` (set only once a report says the phone received it).

        Raises:
            SmsError: `NotFoundError` MESSAGE_NOT_FOUND (an id this caller did not send, or one
                older than the server keeps its record); `FailedPreconditionError`
                DELIVERY_REPORTS_DISABLED (the server collects no reports: `[delivery]` mode
                is off); `InvalidArgumentError` INVALID_MESSAGE_ID (not a decimal sid).
        """
        request = pb.GetDeliveryStatusRequest(message_id=message_id)
        return await self._call(self._stub.GetDeliveryStatus, request, timeout, metadata)

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_RequestT, _ResponseT],
        request: _RequestT,
        timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline of the call
        metadata: Sequence[tuple[str, str]] | None,
    ) -> _ResponseT:
        """Makes the call, retrying as `_start` and the policy allow; raises SmsErrors."""
        attempts, call_metadata, sending = self._start(request, timeout, metadata)
        while True:
            try:
                return await rpc(request, timeout=attempts.remaining(), metadata=call_metadata)
            except grpc.RpcError as rpc_error:  # grpc.aio.AioRpcError, with a status
                error = _from_rpc_error(rpc_error, sending=sending)
                delay = attempts.delay_before_retry(error)
                if delay is None:
                    raise error from rpc_error
            except asyncio.CancelledError:
                # grpc.aio ends the calls of a closing channel by raising
                # asyncio.CancelledError in their callers, as if their tasks had been
                # cancelled. Only a real cancellation of the task may propagate as such.
                task = asyncio.current_task()
                if not self._closed or (task is not None and task.cancelling()):
                    raise
                raise CallCancelledError(
                    "The client was closed during the call.",
                    delivery_unknown=sending,
                ) from None
            await asyncio.sleep(delay)


class SmsClient(_ClientSettings):
    """A blocking client of the yunpian-sms service; owns its `grpc` channel.

    Use it as `with SmsClient("sms.internal:50051") as client: ...`, or call `client.close()`
    when done. Safe to share between threads. Failed calls raise `SmsError` subclasses, never
    a gRPC exception.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        default_timeout: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        retry: RetryPolicy | None = DEFAULT_RETRY_POLICY,
    ) -> None:
        """Opens a channel to `target`; the arguments are those of `AsyncSmsClient`."""
        super().__init__(default_timeout=default_timeout, metadata=metadata, retry=retry)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        self._stub = pb_grpc.SmsServiceStub(self._channel)

    def __enter__(self) -> Self:
        """Returns the client itself; the channel is already open."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the client."""
        self.close()

    def close(self) -> None:
        """Closes the channel, cancelling calls still in flight; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()

    def send_code(
        self,
        phone_number: str,
        code: str,
        *,
        usage_type: pb.UsageType | int | str = pb.USAGE_TYPE_GENERIC,
        request_id: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.SendCodeResponse:
        """Sends `code` by SMS to `phone_number`; see `AsyncSmsClient.send_code`."""
        request = _send_code_request(phone_number, code, usage_type, request_id, idempotent)
        return self._call(self._stub.SendCode, request, timeout, metadata)

    def validate_template(
        self,
        *,
        usage_type: pb.UsageType | int | str | None = None,
        content: str | None = None,
        international: bool = False,
        skip_remote: bool = False,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.ValidateTemplateResponse:
        """Checks a template; see `AsyncSmsClient.validate_template`."""
        request = _validate_template_request(usage_type, content, international, skip_remote)
        return self._call(self._stub.ValidateTemplate, request, timeout, metadata)

    def start_verification(
        self,
        phone_number: str,
        *,
        usage_type: pb.UsageType | int | str = pb.USAGE_TYPE_GENERIC,
        request_id: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.Verification:
        """Starts verifying `phone_number`; see `AsyncSmsClient.start_verification`."""
        request = _start_verification_request(phone_number, usage_type, request_id, idempotent)
        return self._call(self._stub.StartVerification, request, timeout, metadata)

    def check_verification(
        self,
        code: str,
        *,
        verification_id: str | None = None,
        phone_number: str | None = None,
        usage_type: pb.UsageType | int | str | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.CheckVerificationResponse:
        """Checks a typed code; see `AsyncSmsClient.check_verification`."""
        request = _check_verification_request(code, verification_id, phone_number, usage_type)
        return self._call(self._stub.CheckVerification, request, timeout, metadata)

    def cancel_verification(
        self,
        verification_id: str,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.Verification:
        """Cancels a pending verification; see `AsyncSmsClient.cancel_verification`."""
        request = pb.CancelVerificationRequest(verification_id=verification_id)
        return self._call(self._stub.CancelVerification, request, timeout, metadata)

    def get_delivery_status(
        self,
        message_id: str,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> pb.DeliveryStatus:
        """Whether an SMS reached the phone; see `AsyncSmsClient.get_delivery_status`."""
        request = pb.GetDeliveryStatusRequest(message_id=message_id)
        return self._call(self._stub.GetDeliveryStatus, request, timeout, metadata)

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[_RequestT, _ResponseT],
        request: _RequestT,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]] | None,
    ) -> _ResponseT:
        """Makes the call, retrying as `_start` and the policy allow; raises SmsErrors."""
        attempts, call_metadata, sending = self._start(request, timeout, metadata)
        while True:
            try:
                return rpc(request, timeout=attempts.remaining(), metadata=call_metadata)
            except grpc.RpcError as rpc_error:
                error = _from_rpc_error(rpc_error, sending=sending)
                delay = attempts.delay_before_retry(error)
                if delay is None:
                    raise error from rpc_error
            time.sleep(delay)


def _checked_timeout(timeout: float) -> float:
    # A zero, negative or infinite deadline is a mistake: gRPC would fail the call at once or
    # let it hang forever, and an SMS call must do neither.
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, not {timeout!r}")
    return float(timeout)


def _usage_type_value(usage_type: pb.UsageType | int | str) -> pb.UsageType:
    if isinstance(usage_type, str):
        value = _USAGE_TYPES.get(usage_type)
        if value is None:
            names = ", ".join(_USAGE_TYPE_NAMES)
            raise ValueError(
                f"Unknown usage type {usage_type!r}; expected one of {names} "
                "(or a proto name such as 'USAGE_TYPE_SIGN_IN')"
            )
        return cast(pb.UsageType, value)
    if isinstance(usage_type, bool):  # an int to Python, but never meant as a usage type
        raise TypeError("usage_type must be a UsageType value or name, not a bool")
    # Integers pass through unchecked: a value this SDK does not know may be one a newer
    # service does, and the service rejects the rest with INVALID_USAGE_TYPE.
    return cast(pb.UsageType, usage_type)


def _request_id(request_id: str | None, idempotent: bool) -> str:
    if not request_id and idempotent:
        request_id = new_request_id()  # one per logical call: every retry of it reuses it
    return request_id or ""


def _send_code_request(
    phone_number: str,
    code: str,
    usage_type: pb.UsageType | int | str,
    request_id: str | None,
    idempotent: bool,
) -> pb.SendCodeRequest:
    return pb.SendCodeRequest(
        phone_number=phone_number,
        code=code,
        usage_type=_usage_type_value(usage_type),
        request_id=_request_id(request_id, idempotent),
    )


def _start_verification_request(
    phone_number: str,
    usage_type: pb.UsageType | int | str,
    request_id: str | None,
    idempotent: bool,
) -> pb.StartVerificationRequest:
    return pb.StartVerificationRequest(
        phone_number=phone_number,
        usage_type=_usage_type_value(usage_type),
        request_id=_request_id(request_id, idempotent),
    )


def _check_verification_request(
    code: str,
    verification_id: str | None,
    phone_number: str | None,
    usage_type: pb.UsageType | int | str | None,
) -> pb.CheckVerificationRequest:
    if (verification_id is None) == (phone_number is None):
        raise ValueError("Pass exactly one of verification_id and phone_number.")
    # Setting either member selects the oneof, even to "" (which the service then refuses).
    if verification_id is not None:
        if usage_type is not None:
            raise ValueError(
                "usage_type goes with phone_number only: a verification_id names one "
                "verification, whose usage type the service knows."
            )
        return pb.CheckVerificationRequest(verification_id=verification_id, code=code)
    return pb.CheckVerificationRequest(
        phone_number=phone_number,
        usage_type=_usage_type_value(pb.USAGE_TYPE_GENERIC if usage_type is None else usage_type),
        code=code,
    )


def _validate_template_request(
    usage_type: pb.UsageType | int | str | None,
    content: str | None,
    international: bool,
    skip_remote: bool,
) -> pb.ValidateTemplateRequest:
    if (usage_type is None) == (content is None):
        raise ValueError("Pass exactly one of usage_type and content.")
    request = pb.ValidateTemplateRequest(international=international, skip_remote=skip_remote)
    # Setting either member selects the oneof, even to a zero value such as "".
    if usage_type is not None:
        request.usage_type = _usage_type_value(usage_type)
    elif content is not None:
        request.content = content
    return request

"""The clients of the yunpian-sms service: AsyncSmsClient (grpc.aio) and SmsClient (blocking)."""

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
    """Returns a fresh idempotency key for `send_code`: a random UUID4, as 32 hex digits.

    Make one per logical send and pass the same key to every retry of it, so that the service
    sends at most one SMS however often the call is repeated. (`send_code(...,
    idempotent=True)` makes one itself, for the retries the client makes within that call.)
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
        self, timeout: float | None, metadata: Sequence[tuple[str, str]] | None, *, may_retry: bool
    ) -> tuple[CallAttempts, tuple[tuple[str, str], ...]]:
        if self._closed:
            raise RuntimeError(_CLOSED_MESSAGE)
        timeout = self._default_timeout if timeout is None else _checked_timeout(timeout)
        attempts = CallAttempts(self._retry, timeout, may_retry=may_retry)
        return attempts, self._metadata + tuple(metadata or ())


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
        attempts, call_metadata = self._start(timeout, metadata, may_retry=bool(request.request_id))
        return await self._call(self._stub.SendCode, request, attempts, call_metadata, sending=True)

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
        attempts, call_metadata = self._start(timeout, metadata, may_retry=True)
        return await self._call(self._stub.ValidateTemplate, request, attempts, call_metadata)

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_RequestT, _ResponseT],
        request: _RequestT,
        attempts: CallAttempts,
        metadata: tuple[tuple[str, str], ...],
        *,
        sending: bool = False,
    ) -> _ResponseT:
        while True:
            try:
                return await rpc(request, timeout=attempts.remaining(), metadata=metadata)
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
        attempts, call_metadata = self._start(timeout, metadata, may_retry=bool(request.request_id))
        return self._call(self._stub.SendCode, request, attempts, call_metadata, sending=True)

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
        attempts, call_metadata = self._start(timeout, metadata, may_retry=True)
        return self._call(self._stub.ValidateTemplate, request, attempts, call_metadata)

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[_RequestT, _ResponseT],
        request: _RequestT,
        attempts: CallAttempts,
        metadata: tuple[tuple[str, str], ...],
        *,
        sending: bool = False,
    ) -> _ResponseT:
        while True:
            try:
                return rpc(request, timeout=attempts.remaining(), metadata=metadata)
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


def _send_code_request(
    phone_number: str,
    code: str,
    usage_type: pb.UsageType | int | str,
    request_id: str | None,
    idempotent: bool,
) -> pb.SendCodeRequest:
    if not request_id and idempotent:
        request_id = new_request_id()  # one per logical call: every retry of it reuses it
    return pb.SendCodeRequest(
        phone_number=phone_number,
        code=code,
        usage_type=_usage_type_value(usage_type),
        request_id=request_id or "",
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

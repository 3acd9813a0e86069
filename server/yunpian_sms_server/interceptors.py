"""The server interceptor: per RPC a request id, the caller, one structured event, the metrics,
and domain errors turned into rich statuses. Health and reflection RPCs pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import grpc
import structlog

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.auth import Authenticator, set_current_caller
from yunpian_sms_server.errors import Reason, ServiceError, to_grpc_status
from yunpian_sms_server.ids import new_id
from yunpian_sms_server.metrics import Metrics

SERVICE_PREFIX: Final = "/yunpian.sms.v1.SmsService/"
REQUEST_ID_KEY: Final = "x-request-id"
# A caller's x-request-id is kept when it is this safe to log; otherwise a new one is made.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Every RPC event carries these keys, None where the RPC did not get that far.
EVENT_KEYS: Final = (
    "request_id",
    "caller",
    "usage_type",
    "international",
    "phone",
    "idempotency_key",
    "yunpian_code",
    "message_id",
    "replayed",
)

_log = structlog.get_logger("yunpian_sms.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Awaitable[Any]]


def bind_rpc_fields(**fields: object) -> None:
    """Adds fields to the current RPC's event (phone, usage_type, ...)."""
    structlog.contextvars.bind_contextvars(**fields)


def _request_id(metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return new_id()


class RpcInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every SmsService RPC: request id, authentication, event, metrics, error status."""

    def __init__(self, authenticator: Authenticator, metrics: Metrics) -> None:
        self._authenticator = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(SERVICE_PREFIX):
            return handler
        rpc = method.removeprefix(SERVICE_PREFIX)
        inner = cast(Handler, handler.unary_unary)

        async def handled(request: Any, context: Context) -> Any:
            return await self._handle(rpc, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            handled,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _handle(self, rpc: str, handler: Handler, request: Any, context: Context) -> Any:
        structlog.contextvars.clear_contextvars()
        metadata = tuple(context.invocation_metadata() or ())
        request_id = _request_id(metadata)
        structlog.contextvars.bind_contextvars(**dict.fromkeys(EVENT_KEYS))
        bind_rpc_fields(request_id=request_id, replayed=False)
        trailer = ((REQUEST_ID_KEY, request_id),)
        started = time.perf_counter()
        in_flight = self._metrics.child(self._metrics.in_flight, rpc)
        in_flight.inc()
        grpc_code, failure, response = "OK", None, None
        try:
            caller = self._authenticator.authenticate(metadata, context.auth_context())
            set_current_caller(caller)
            bind_rpc_fields(caller=caller.name)
            response = await handler(request, context)
            context.set_trailing_metadata(trailer)
            return response
        except ServiceError as error:
            grpc_code, failure = error.code.name, error
            if error.yunpian_code is not None:
                bind_rpc_fields(yunpian_code=error.yunpian_code)
            await _abort(context, error, trailer)
        except asyncio.CancelledError:
            grpc_code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception:
            grpc_code = grpc.StatusCode.INTERNAL.name
            failure = ServiceError(Reason.INTERNAL_ERROR, "Internal server error.")
            _log.exception("rpc_failed", rpc=rpc)
            await _abort(context, failure, trailer)
        finally:
            in_flight.dec()
            fields = structlog.contextvars.get_contextvars()
            _log.info(
                "rpc",
                rpc=rpc,
                grpc_code=grpc_code,
                reason=failure.reason.value if failure else None,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            self._count(rpc, grpc_code, failure, response, fields)
            structlog.contextvars.clear_contextvars()

    def _count(
        self,
        rpc: str,
        grpc_code: str,
        failure: ServiceError | None,
        response: Any,
        fields: dict[str, Any],
    ) -> None:
        metrics = self._metrics
        metrics.child(metrics.rpcs, rpc, grpc_code, str(fields.get("caller") or "")).inc()
        yunpian_code = fields.get("yunpian_code")
        if yunpian_code:
            metrics.yunpian_errors.labels(str(yunpian_code)).inc()
        if failure is not None and failure.reason is Reason.RATE_LIMITED:
            metrics.rate_limited.labels(failure.metadata.get("scope", "")).inc()
        elif failure is not None and failure.reason is Reason.PROVIDER_RATE_LIMITED:
            metrics.rate_limited.labels("yunpian").inc()
        if rpc != "SendCode":
            return
        outcome = failure.reason.value if failure else grpc_code
        international = fields.get("international")
        metrics.child(
            metrics.sends,
            str(fields.get("usage_type") or ""),
            "" if international is None else str(international).lower(),
            outcome,
        ).inc()
        if fields.get("replayed"):
            metrics.replays.inc()
        elif isinstance(response, pb.SendCodeResponse):
            metrics.segments.inc(response.segment_count)
            # A fee YunPian wrote oddly is still passed on to the caller, just not summed.
            with contextlib.suppress(ValueError):
                metrics.child(metrics.fee, response.fee_unit).inc(float(response.fee))


async def _abort(
    context: Context, error: ServiceError, trailer: tuple[tuple[str, str], ...]
) -> None:
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, (*status.trailing_metadata, *trailer))

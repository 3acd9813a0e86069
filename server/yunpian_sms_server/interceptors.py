"""Server interceptors: the one structured event per RPC, and domain errors turned into statuses."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import grpc
import structlog

from yunpian_sms_server.errors import Reason, ServiceError, to_grpc_status

SERVICE_PREFIX: Final = "/yunpian.sms.v1.SmsService/"
# The caller of unauthenticated RPCs; rate limits and request_ids are scoped by caller.
ANONYMOUS_CALLER: Final = "anonymous"
# Every RPC event carries these keys, None where the RPC did not get that far.
EVENT_KEYS: Final = (
    "request_id",
    "caller",
    "usage_type",
    "international",
    "phone",
    "yunpian_code",
    "message_id",
    "replayed",
)
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default=ANONYMOUS_CALLER)

_log = structlog.get_logger("yunpian_sms.rpc")

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def current_caller() -> str:
    """The authenticated caller of the current RPC."""
    return _caller.get()


def bind_rpc_fields(**fields: object) -> None:
    """Adds fields to the current RPC's event (request_id, phone, usage_type, ...)."""
    structlog.contextvars.bind_contextvars(**fields)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap(rpc: str, handler: Handler) -> Handler:
    async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**dict.fromkeys(EVENT_KEYS))
        bind_rpc_fields(caller=current_caller(), replayed=False)
        started = time.perf_counter()
        grpc_code, reason = "OK", None
        try:
            return await handler(request, context)
        except ServiceError as error:
            grpc_code, reason = error.code.name, error.reason.value
            if error.yunpian_code is not None:
                bind_rpc_fields(yunpian_code=error.yunpian_code)
            await _abort(context, error)
        except asyncio.CancelledError:
            grpc_code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception:
            grpc_code, reason = grpc.StatusCode.INTERNAL.name, Reason.INTERNAL_ERROR.value
            _log.exception("rpc_failed", rpc=rpc)
            await _abort(context, ServiceError(Reason.INTERNAL_ERROR, "Internal server error."))
        finally:
            _log.info(
                "rpc",
                rpc=rpc,
                grpc_code=grpc_code,
                reason=reason,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            structlog.contextvars.clear_contextvars()

    return logged


class RpcEventInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Logs one `rpc` event per SmsService call and turns ServiceError into a rich status."""

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
        return grpc.unary_unary_rpc_method_handler(
            _wrap(method.removeprefix(SERVICE_PREFIX), cast(Handler, handler.unary_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

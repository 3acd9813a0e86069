"""What every SmsService RPC goes through: a request id, the caller, one structured event, the
metrics, and domain errors turned into rich statuses.

The envelope wraps the servicer's methods once, when they are registered, rather than through a
grpc.aio interceptor: an interceptor costs a coroutine and a new method handler on every RPC and
keeps grpc from its registered-method fast path (bench/README.md). Health and reflection RPCs are
registered as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, Final, cast

import grpc
import structlog

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.auth import Authenticator, set_current_caller
from yunpian_sms_server.errors import Reason, ServiceError, to_grpc_status
from yunpian_sms_server.ids import new_id
from yunpian_sms_server.logs import end_rpc_fields, start_rpc_fields
from yunpian_sms_server.metrics import Metrics

RPC_NAMES: Final = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["SmsService"].methods)
REQUEST_ID_KEY: Final = "x-request-id"
# A caller's x-request-id is kept when it is this safe to log; otherwise a new one is made.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_log = structlog.get_logger("yunpian_sms.rpc")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Awaitable[Any]]


def _request_id(metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return new_id()


class RpcEnvelope:
    """Wraps every SmsService RPC: request id, authentication, event, metrics, error status."""

    def __init__(self, authenticator: Authenticator, metrics: Metrics) -> None:
        self._authenticator = authenticator
        self._metrics = metrics

    def add_service(self, servicer: pb_grpc.SmsServiceServicer, server: grpc.aio.Server) -> None:
        """Registers the SmsService methods of `servicer` on `server`, each wrapped."""
        wrapped = SimpleNamespace(
            **{rpc: self.wrap(rpc, getattr(servicer, rpc)) for rpc in RPC_NAMES}
        )
        # The generated registration only reads the methods: any object with them will do.
        pb_grpc.add_SmsServiceServicer_to_server(cast(pb_grpc.SmsServiceServicer, wrapped), server)

    def wrap(self, rpc: str, handler: Handler) -> Handler:
        """The RPC method `rpc` served by `handler` inside the envelope."""
        metrics = self._metrics
        in_flight = metrics.child(metrics.in_flight, rpc)

        async def handled(request: Any, context: Context) -> Any:
            metadata = tuple(context.invocation_metadata() or ())
            request_id = _request_id(metadata)
            fields = start_rpc_fields(request_id)
            trailer = ((REQUEST_ID_KEY, request_id),)
            started = time.perf_counter()
            in_flight.inc()
            grpc_code, failure, response = "OK", None, None
            try:
                caller = self._authenticator.authenticate(metadata, context.auth_context)
                set_current_caller(caller)
                fields["caller"] = caller.name
                response = await handler(request, context)
                context.set_trailing_metadata(trailer)
                return response
            except ServiceError as error:
                grpc_code, failure = error.code.name, error
                if error.yunpian_code is not None:
                    fields["yunpian_code"] = error.yunpian_code
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
                _log.info(
                    "rpc",
                    rpc=rpc,
                    grpc_code=grpc_code,
                    reason=failure.reason.value if failure else None,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )
                self._count(rpc, grpc_code, failure, response, fields)
                end_rpc_fields()

        return cast(Handler, handled)

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
            metrics.child(metrics.yunpian_errors, str(yunpian_code)).inc()
        if failure is not None and failure.reason is Reason.RATE_LIMITED:
            metrics.child(metrics.rate_limited, failure.metadata.get("scope", "")).inc()
        elif failure is not None and failure.reason is Reason.PROVIDER_RATE_LIMITED:
            metrics.child(metrics.rate_limited, "yunpian").inc()
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

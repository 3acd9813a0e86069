"""What every SmsService RPC goes through: a request id, the caller, one structured event, the
metrics, and domain errors turned into rich statuses.

The envelope wraps the servicer's methods once, when they are registered, rather than through a
grpc.aio interceptor: an interceptor costs a coroutine and a new method handler on every RPC and
keeps grpc from its registered-method fast path (bench/README.md). It registers them with request
parsers of its own, so bytes that are not a request of the method's type (a corrupt message, a
string that is not UTF-8) are answered INVALID_ARGUMENT MALFORMED_REQUEST like any bad input,
instead of grpc's UNKNOWN and a traceback. Health and reflection RPCs are registered as they are.

The `rpc` event is written and the metrics counted before the answer leaves, so whoever sees
the answer can find its event. Each RPC is counted twice: in the service's own metrics and in
grpc-ecosystem's (`grpc_server_*`, metrics.py). With tracing on, each RPC is a server span
(telemetry.py) current while it runs, continuing the caller's traceparent; its trace id is in
the record. With tracing off, nothing of it runs.

While the server drains, calls are refused with SHUTTING_DOWN; a call interrupted at the end
of the grace period answers with what it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
import structlog
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.auth import Authenticator
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.ids import new_id
from yunpian_sms_server.logs import log_rpc_record
from yunpian_sms_server.metrics import GRPC_CODE_LABELS, GRPC_UNARY, Metrics
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.service import RpcCall, SmsServicer
from yunpian_sms_server.shutdown import Shutdown
from yunpian_sms_server.statuses import status_code, to_grpc_status

if TYPE_CHECKING:  # imported only when tracing is on (app.py)
    from yunpian_sms_server.telemetry import RpcSpan, Tracing

SERVICE: Final = pb.DESCRIPTOR.services_by_name["SmsService"]
RPC_NAMES: Final = tuple(method.name for method in SERVICE.methods)
SERVICE_NAME: Final = SERVICE.full_name
# The RPCs that send an SMS: counted in the sends, segments and fee metrics.
SENDING_RPCS: Final = frozenset({"SendCode", "StartVerification"})
REQUEST_ID_KEY: Final = "x-request-id"
# A caller's x-request-id is kept when it is this safe to log; otherwise a new one is made.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_log = structlog.get_logger("yunpian_sms.rpc")
Context = grpc.aio.ServicerContext[Any, Any]
# A servicer method, and the gRPC method the envelope makes of it.
Handler = Callable[[Any, RpcCall], Awaitable[Any]]
GrpcHandler = Callable[[Any, Context], Awaitable[Any]]


class MalformedRequest:
    """What the envelope's parser hands on for bytes that are not a request of the RPC's type."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _parser(message_class: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return MalformedRequest(name)

    return parse


def _malformed(request: MalformedRequest) -> ServiceError:
    return ServiceError(
        Reason.MALFORMED_REQUEST,
        f"The request is not a valid {request.message_type} message (corrupt bytes, or a "
        "string field that is not UTF-8).",
    )


def _shutting_down() -> ServiceError:
    return ServiceError(Reason.SHUTTING_DOWN, "The server is shutting down; retry elsewhere.")


def _request_id(metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return new_id()


class RpcEnvelope:
    """Wraps every SmsService RPC: request id, authentication, event, metrics, error status."""

    def __init__(
        self,
        authenticator: Authenticator,
        metrics: Metrics,
        shutdown: Shutdown,
        tracing: Tracing | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        self._shutdown = shutdown
        self._tracing = tracing
        # The children every answer counts in, by (method, code, caller): one look-up, not three.
        self._outcome_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def add_service(self, servicer: SmsServicer, server: grpc.aio.Server) -> None:
        """Registers the SmsService methods of `servicer` on `server`, each wrapped."""
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                self.wrap(method.name, getattr(servicer, method.name)),
                request_deserializer=_parser(message_factory.GetMessageClass(method.input_type)),
                response_serializer=message_factory.GetMessageClass(
                    method.output_type
                ).SerializeToString,
            )
            for method in SERVICE.methods
        }
        self._metrics.add_grpc_methods(SERVICE_NAME, RPC_NAMES)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
        )
        server.add_registered_method_handlers(SERVICE.full_name, handlers)

    def wrap(self, rpc: str, handler: Handler) -> GrpcHandler:
        """The gRPC method `rpc`: `handler` served inside the envelope."""
        metrics = self._metrics
        in_flight = metrics.child(metrics.in_flight, rpc)
        grpc_started = metrics.child(metrics.grpc_started, GRPC_UNARY, SERVICE_NAME, rpc)
        shutdown = self._shutdown
        tracing = self._tracing

        async def handled(request: Any, context: Context) -> Any:
            task = cast("asyncio.Task[object]", asyncio.current_task())
            shutdown.enter(task)
            metadata = tuple(context.invocation_metadata() or ())
            request_id = _request_id(metadata)
            record = RpcRecord(request_id)
            log_rpc_record(record)
            started = time.perf_counter()
            in_flight.inc()
            grpc_started.inc()
            span = None if tracing is None else tracing.start_rpc(rpc, metadata, record)
            failure: ServiceError | None = None
            response = None
            try:
                try:
                    if shutdown.draining:
                        raise _shutting_down()
                    caller = self._authenticator.authenticate(metadata, context.auth_context)
                    record.caller = caller.name
                    if isinstance(request, MalformedRequest):
                        raise _malformed(request)
                    response = await handler(
                        request, RpcCall(caller, record, context.time_remaining)
                    )
                except ServiceError as error:
                    failure = error
                except asyncio.CancelledError:
                    if not shutdown.absorb_interrupt():
                        self._finish(rpc, "CANCELLED", None, record, started, span)
                        raise
                    failure = _shutting_down()
                except Exception:
                    failure = ServiceError(Reason.INTERNAL_ERROR, "Internal server error.")
                    _log.exception("rpc_failed", rpc=rpc)
                trailer = ((REQUEST_ID_KEY, request_id),)
                if failure is None:
                    self._finish(rpc, "OK", None, record, started, span)
                    context.set_trailing_metadata(trailer)
                    return response
                if failure.yunpian_code is not None:
                    record.yunpian_code = failure.yunpian_code
                self._finish(rpc, status_code(failure).name, failure, record, started, span)
                status = to_grpc_status(failure)
                await context.abort(
                    status.code, status.details, (*status.trailing_metadata, *trailer)
                )
            finally:
                in_flight.dec()
                if span is not None:
                    span.leave()
                log_rpc_record(None)
                shutdown.leave(task)

        return cast(GrpcHandler, handled)

    def _finish(
        self,
        rpc: str,
        grpc_code: str,
        failure: ServiceError | None,
        record: RpcRecord,
        started: float,
        span: RpcSpan | None,
    ) -> None:
        """Writes the RPC's event (its record's fields with the outcome), counts it and ends its
        span, before its answer leaves."""
        duration_s = time.perf_counter() - started
        reason = failure.reason.value if failure else None
        _log.info(
            "rpc",
            rpc=rpc,
            grpc_code=grpc_code,
            reason=reason,
            duration_ms=round(duration_s * 1000, 3),
        )
        self._count(rpc, grpc_code, failure, record, duration_s)
        if span is not None:
            span.end(grpc_code, reason, record)

    def _count(
        self,
        rpc: str,
        grpc_code: str,
        failure: ServiceError | None,
        record: RpcRecord,
        duration_s: float,
    ) -> None:
        metrics = self._metrics
        outcome_key = (rpc, grpc_code, record.caller or "")
        counted = self._outcome_children.get(outcome_key)
        if counted is None:
            labels = (GRPC_UNARY, SERVICE_NAME, rpc, GRPC_CODE_LABELS[grpc_code])
            counted = self._outcome_children[outcome_key] = (
                metrics.child(metrics.rpcs, *outcome_key),
                metrics.child(metrics.grpc_handled, *labels),
                metrics.child(metrics.grpc_handling, *labels),
            )
        rpcs, handled, handling = counted
        rpcs.inc()
        handled.inc()
        handling.observe(duration_s)
        if record.yunpian_code:
            metrics.child(metrics.yunpian_errors, str(record.yunpian_code)).inc()
        if failure is not None and failure.reason is Reason.RATE_LIMITED:
            metrics.child(metrics.rate_limited, failure.metadata.get("scope", "")).inc()
        elif failure is not None and failure.reason is Reason.PROVIDER_RATE_LIMITED:
            metrics.child(metrics.rate_limited, "yunpian").inc()
        if record.verification_change:
            change = metrics.child(
                metrics.verifications, record.usage_type or "", record.verification_change
            )
            change.inc()
        if record.check_result:
            metrics.child(metrics.verification_checks, record.check_result).inc()
        if rpc not in SENDING_RPCS:
            return
        outcome = failure.reason.value if failure else grpc_code
        international = record.international
        metrics.child(
            metrics.sends,
            record.usage_type or "",
            "" if international is None else str(international).lower(),
            outcome,
        ).inc()
        if record.replayed:
            metrics.replays.inc()
        elif record.segments is not None:
            metrics.segments.inc(record.segments)
        if not record.replayed and record.fee is not None:
            # A fee YunPian wrote oddly is still passed on to the caller, just not summed.
            with contextlib.suppress(ValueError):
                metrics.child(metrics.fee, record.fee_unit or "").inc(float(record.fee))

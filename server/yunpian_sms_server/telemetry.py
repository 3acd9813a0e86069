"""OpenTelemetry tracing ([telemetry]): a SERVER span per SmsService RPC that continues the
caller's W3C trace context (`traceparent`, `tracestate` metadata), with the adapters' spans
(traced_adapters) as its children, exported over OTLP/gRPC.

The app imports this module only when tracing is enabled: with it off, the server neither
loads OpenTelemetry's tracing SDK nor calls it. Spans follow OpenTelemetry's RPC conventions
(rpc.system, rpc.service, rpc.method, rpc.grpc.status_code; an error status for the codes that
are the server's fault) and carry the caller's name, the usage type and the refusal's reason:
never a phone number, code, token or text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextvars import Token
from typing import Final

import aiohttp
import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from yunpian_sms_server.config import TelemetryConfig, YunpianConfig
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.stores import Store
from yunpian_sms_server.traced_adapters import TracedStore, TracedYunpianClient
from yunpian_sms_server.yunpian import YunpianClient

TRACER_NAME: Final = "yunpian_sms_server"
# The metadata keys of W3C trace context.
TRACE_CONTEXT_KEYS: Final = frozenset({"traceparent", "tracestate"})
# OpenTelemetry's gRPC conventions: a server span is an error for these codes only; the others
# are the caller's doing (a bad argument, a refusal) and leave its status unset.
SERVER_ERROR_CODES: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_CODE_VALUES: Final = {code.name: code.value[0] for code in grpc.StatusCode}
# When the server stops, the spans not yet exported get this long to reach the collector: one
# that is down or unreachable does not hold the stop up for the exporter's retries.
STOP_EXPORT_S: Final = 2.0
Metadata = Sequence[tuple[str, str | bytes]]


class RpcSpan:
    """The server span of one RPC, current in its task until `leave`."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token

    def end(self, grpc_code: str, reason: str | None, record: RpcRecord) -> None:
        """Ends the span with the RPC's outcome (before the answer leaves)."""
        span = self.span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", _CODE_VALUES[grpc_code])
            for key, value in (
                ("yunpian_sms.caller", record.caller),
                ("yunpian_sms.usage_type", record.usage_type),
                ("yunpian_sms.reason", reason),
            ):
                if value is not None:
                    span.set_attribute(key, value)
            if grpc_code in SERVER_ERROR_CODES:
                span.set_status(StatusCode.ERROR, reason or grpc_code)
        span.end()

    def leave(self) -> None:
        """The span is no longer current (the RPC's task is done with it)."""
        otel_context.detach(self.token)


class _StoppableExporter(SpanExporter):
    """An exporter whose export can be cut short from another thread: `shutdown` ends the real
    one's retries at once; it may be called again (by the span processor), to no effect."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export(spans)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._exporter.shutdown()


class Tracing:
    """The server's tracer provider (a provider of its own: servers can share a process)."""

    def __init__(
        self, config: TelemetryConfig, service: str, exporter: SpanExporter | None = None
    ) -> None:
        """Spans go to `exporter` as each ends when given (tests: the SDK's
        InMemorySpanExporter), else in batches to the configured OTLP collector."""
        self._service = service
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({SERVICE_NAME: config.service_name}),
            shutdown_on_exit=False,
        )
        processor: SpanProcessor
        if exporter is None:
            # Imported only to export: tests that pass an exporter need none of it.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self._exporter = _StoppableExporter(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            processor = BatchSpanProcessor(self._exporter)
        else:
            self._exporter = _StoppableExporter(exporter)
            processor = SimpleSpanProcessor(self._exporter)
        self._provider.add_span_processor(processor)
        self.tracer = self._provider.get_tracer(TRACER_NAME)
        self._propagator = TraceContextTextMapPropagator()

    def store(self, store: Store, url: str) -> Store:
        """The store, each operation a span."""
        return TracedStore(store, self.tracer, url)

    def yunpian_client(
        self,
        session: aiohttp.ClientSession,
        config: YunpianConfig,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> YunpianClient:
        """A YunPian client whose every call is a span."""
        return TracedYunpianClient(
            session,
            self.tracer,
            base_url=config.base_url,
            api_key=config.api_key,
            timeout_s=config.timeout_seconds,
            on_latency=on_latency,
        )

    def start_rpc(self, rpc: str, metadata: Metadata, record: RpcRecord) -> RpcSpan:
        """Starts the RPC's server span, a child of the caller's span when its metadata names
        one, and makes it current; notes its trace id in the record."""
        carrier = {
            key: value
            for key, value in metadata
            if key in TRACE_CONTEXT_KEYS and isinstance(value, str)
        }
        span = self.tracer.start_span(
            f"{self._service}/{rpc}",
            context=self._propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self._service,
                "rpc.method": rpc,
            },
        )
        context = span.get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        return RpcSpan(span, token)

    def shutdown(self) -> None:
        """Exports the spans not yet sent and stops (blocks, STOP_EXPORT_S at most)."""
        cut_short = threading.Timer(STOP_EXPORT_S, self._exporter.shutdown)
        cut_short.start()
        try:
            self._provider.shutdown()
        finally:
            cut_short.cancel()

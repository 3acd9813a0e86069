"""Tracing (telemetry.py, traced_adapters.py) through real gRPC: a client sends a W3C
traceparent, the server continues its trace with a SERVER span per RPC, whose children are the
store's operations and the calls to YunPian; the SDK's InMemorySpanExporter receives them."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from support import StartServer, eventually, free_port, log_events, make_config, target_of

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox
from yunpian_sms_server.telemetry import STOP_EXPORT_S
from yunpian_sms_server.yunpian import SINGLE_SEND_PATH

CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
SAMPLED = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
NOT_SAMPLED = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"
TOKEN = "checkout-token-0123456789abcdef"
CODE = "SeCr3t99"
VERIFY = {"enabled": True, "secret": "test-verify-secret-0123456789abcdef"}
SEND_CODE = "yunpian.sms.v1.SmsService/SendCode"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def telemetry(**keys: object) -> dict[str, object]:
    return {"enabled": True, **keys}


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is SpanKind.SERVER]


def children_of(parent: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        span
        for span in spans
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def attribute_values(span: ReadableSpan) -> Iterator[str]:
    """Every attribute value of a span (its events' too, and its status text), as text."""
    for attributes in (span.attributes, *(event.attributes for event in span.events)):
        for value in (attributes or {}).values():
            if isinstance(value, (tuple, list)):
                yield from (str(item) for item in value)
            else:
                yield str(value)
    if span.status.description:
        yield span.status.description


async def test_a_send_continues_the_callers_trace_with_store_and_yunpian_spans(
    start_server: StartServer,
    sandbox: RunningSandbox,
    store_table: dict[str, Any],
    exporter: InMemorySpanExporter,
    log_output: io.StringIO,
) -> None:
    config = make_config(telemetry=telemetry(), store=store_table)
    server = await start_server(config, span_exporter=exporter)
    metadata = [("traceparent", SAMPLED), ("tracestate", "vendor=opaque")]
    async with AsyncSmsClient(target_of(server), metadata=metadata, retry=None) as client:
        await client.send_code("13800138000", "123456", usage_type="SignIn", request_id="t-1")
    await eventually(lambda: any(s.name == "complete" for s in exporter.get_finished_spans()))
    spans = exporter.get_finished_spans()

    [rpc] = server_spans(spans)
    assert rpc.context is not None
    assert rpc.parent is not None
    assert rpc.name == SEND_CODE
    assert format_trace_id(rpc.context.trace_id) == CALLER_TRACE_ID
    assert format_span_id(rpc.parent.span_id) == CALLER_SPAN_ID
    assert rpc.parent.is_remote
    assert rpc.context.trace_state.get("vendor") == "opaque"
    assert dict(rpc.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "yunpian.sms.v1.SmsService",
        "rpc.method": "SendCode",
        "rpc.grpc.status_code": 0,
        "yunpian_sms.caller": "anonymous",
        "yunpian_sms.usage_type": "SignIn",
    }
    assert rpc.status.status_code is StatusCode.UNSET
    assert {span.context.trace_id for span in spans if span.context} == {rpc.context.trace_id}

    children = children_of(rpc, spans)
    assert len(children) == len(spans) - 1  # every other span is the RPC's child
    store_spans = [span for span in children if "db.system" in (span.attributes or {})]
    system = "memory" if store_table["url"].startswith("memory") else "redis"
    assert [span.name for span in store_spans] == ["claim_and_acquire", "complete"]
    for span in store_spans:
        attributes = span.attributes or {}
        assert attributes["db.system"] == system
        assert attributes["db.operation.name"] == span.name
        if system == "redis":
            assert span.kind is SpanKind.CLIENT
            assert attributes["server.address"] == "127.0.0.1"
            assert attributes["db.namespace"] == "9"
    [http] = [span for span in children if span.kind is SpanKind.CLIENT and span not in store_spans]
    port = int(sandbox.url.rsplit(":", 1)[1])
    assert http.name == f"POST {SINGLE_SEND_PATH}"
    assert dict(http.attributes or {}) == {
        "http.request.method": "POST",
        "url.full": sandbox.url + SINGLE_SEND_PATH,
        "url.path": SINGLE_SEND_PATH,
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
        "yunpian.code": 0,
    }
    assert http.status.status_code is StatusCode.UNSET

    [event] = log_events(log_output, "rpc")
    assert event["trace_id"] == CALLER_TRACE_ID


async def test_no_span_attribute_holds_a_number_code_key_token_or_text(
    start_server: StartServer, sandbox: RunningSandbox, exporter: InMemorySpanExporter
) -> None:
    config = make_config(
        telemetry=telemetry(),
        verify=VERIFY,
        auth={"callers": {"checkout": {"token_sha256": hash_token(TOKEN)}}},
    )
    server = await start_server(config, span_exporter=exporter)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    async with AsyncSmsClient(target_of(server), metadata=metadata, retry=None) as client:
        await client.send_code("13800138000", CODE, request_id="ok")
        await client.send_code("+14155552671", CODE)
        sandbox.sandbox.inject(Fault(kind="error", code=22, detail="mobile 13900139000 limit"))
        with pytest.raises(SmsError):
            await client.send_code("13900139000", CODE)
        with pytest.raises(SmsError):
            await client.send_code("13700137000", "bad code!")
        await client.validate_template(content="验证码{{code}}")
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        started = await stub.StartVerification(
            pb.StartVerificationRequest(phone_number="13600136000"), metadata=metadata
        )
        await stub.CheckVerification(
            pb.CheckVerificationRequest(verification_id=started.verification_id, code="000000"),
            metadata=metadata,
        )
    spans = exporter.get_finished_spans()
    assert len(server_spans(spans)) == 7
    texts = [message.text for message in sandbox.sandbox.messages]
    generated = [message.code for message in sandbox.sandbox.messages if message.code]
    secrets = [
        *("13800138000", "+8613800138000", "138****8000", "14155552671", "+1415****671"),
        *("13900139000", "139****9000", "13700137000", "13600136000", "136****6000"),
        CODE,
        "bad code!",
        *generated,
        SANDBOX_API_KEY,
        TOKEN,
        hash_token(TOKEN),
        *texts,
        "验证码",
    ]
    assert len(texts) == 3
    for span in spans:
        for value in attribute_values(span):
            leaked = [secret for secret in secrets if secret in value]
            assert leaked == [], f"{span.name} holds {leaked} in {value!r}"
    [refused] = [
        span
        for span in spans
        if (span.attributes or {}).get("yunpian.code") == 22  # the injected YunPian error
    ]
    assert refused.status.status_code is StatusCode.ERROR
    callers = {(span.attributes or {}).get("yunpian_sms.caller") for span in server_spans(spans)}
    assert callers == {"checkout"}


async def test_server_spans_are_errors_only_for_the_servers_faults(
    start_server: StartServer, sandbox: RunningSandbox, exporter: InMemorySpanExporter
) -> None:
    server = await start_server(make_config(telemetry=telemetry()), span_exporter=exporter)
    async with AsyncSmsClient(target_of(server), retry=None) as client:
        with pytest.raises(SmsError):
            await client.send_code("not a phone", "123456")
        sandbox.sandbox.inject(Fault(kind="http_status", status=503))
        with pytest.raises(SmsError):
            await client.send_code("13800138000", "123456")
    spans = exporter.get_finished_spans()
    invalid, unavailable = server_spans(spans)
    invalid_argument = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (invalid.attributes or {})["rpc.grpc.status_code"] == invalid_argument
    assert (invalid.attributes or {})["yunpian_sms.reason"] == "INVALID_PHONE_NUMBER"
    assert invalid.status.status_code is StatusCode.UNSET
    assert children_of(invalid, spans) == []
    assert (unavailable.attributes or {})["yunpian_sms.reason"] == "PROVIDER_UNAVAILABLE"
    assert unavailable.status.status_code is StatusCode.ERROR
    [http] = [span for span in children_of(unavailable, spans) if span.name.startswith("POST")]
    assert (http.attributes or {})["http.response.status_code"] == 503
    assert (http.attributes or {})["error.type"] == "503"
    assert "yunpian.code" not in (http.attributes or {})
    assert http.status.status_code is StatusCode.ERROR


async def test_sampling_follows_the_callers_flag_and_the_ratio_for_new_traces(
    start_server: StartServer, exporter: InMemorySpanExporter, log_output: io.StringIO
) -> None:
    never = make_config(telemetry=telemetry(sample_ratio=0.0))
    server = await start_server(never, span_exporter=exporter)
    async with AsyncSmsClient(target_of(server), retry=None) as client:
        await client.send_code("13800138000", "123456")
        assert exporter.get_finished_spans() == ()
        await client.send_code("13900139000", "123456", metadata=[("traceparent", SAMPLED)])
        assert [span.name for span in server_spans(exporter.get_finished_spans())] == [SEND_CODE]
    exporter.clear()
    always = await start_server(make_config(telemetry=telemetry()), span_exporter=exporter)
    async with AsyncSmsClient(target_of(always), retry=None) as client:
        await client.send_code("13700137000", "123456", metadata=[("traceparent", NOT_SAMPLED)])
        assert exporter.get_finished_spans() == ()
        await client.send_code("13600136000", "123456", metadata=[("traceparent", "garbage")])
    [fresh] = server_spans(exporter.get_finished_spans())
    assert fresh.parent is None
    assert fresh.context is not None
    trace_ids = [event["trace_id"] for event in log_events(log_output, "rpc")]
    assert trace_ids[1:3] == [CALLER_TRACE_ID, CALLER_TRACE_ID]
    assert trace_ids[3] == format_trace_id(fresh.context.trace_id) != CALLER_TRACE_ID


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(  # noqa: N802 - OTLP's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_the_configured_otlp_collector_by_the_time_the_server_stops(
    start_server: StartServer,
) -> None:
    collector = Collector()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        config = make_config(telemetry=telemetry(otlp_endpoint=endpoint, service_name="sms-eu"))
        server = await start_server(config)
        async with AsyncSmsClient(target_of(server), retry=None) as client:
            await client.send_code("13800138000", "123456", metadata=[("traceparent", SAMPLED)])
        await server.stop()
    finally:
        await otlp.stop(None)
    exported = [
        (resource.resource, span)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in exported}
    assert {SEND_CODE, f"POST {SINGLE_SEND_PATH}"} <= names
    for resource, span in exported:
        attributes = {a.key: a.value.string_value for a in resource.attributes}
        assert attributes["service.name"] == "sms-eu"
        assert span.trace_id.hex() == CALLER_TRACE_ID


async def test_a_collector_that_is_down_delays_the_stop_by_a_bounded_time(
    start_server: StartServer,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    server = await start_server(make_config(telemetry=telemetry(otlp_endpoint=down)))
    async with AsyncSmsClient(target_of(server), retry=None) as client:
        await client.send_code("13800138000", "123456")
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < STOP_EXPORT_S + 2.0


async def test_without_telemetry_no_trace_is_continued_or_logged(
    client: AsyncSmsClient, log_output: io.StringIO
) -> None:
    await client.send_code("13800138000", "123456", metadata=[("traceparent", SAMPLED)])
    [event] = log_events(log_output, "rpc")
    assert event["trace_id"] is None


def test_without_telemetry_the_server_does_not_even_load_the_tracing_sdk() -> None:
    # (redis-py imports OpenTelemetry's API and metrics SDK when they are installed.)
    tracing = ("yunpian_sms_server.telemetry", "yunpian_sms_server.traced_adapters")
    tracing += ("opentelemetry.sdk.trace", "opentelemetry.exporter")
    probe = (
        "import sys, yunpian_sms_server.app, yunpian_sms_server.cli;"
        f"print(sorted(m for m in sys.modules if m.startswith({tracing!r})))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert imported.stdout.strip() == "[]"

"""Prometheus metrics (metrics.py): the endpoint, served only when configured, and a registry
of each server's own; scraped over HTTP. What the envelope counts per RPC is in
test_rpc_envelope.py."""

from __future__ import annotations

import io

import aiohttp
import grpc
import pytest
from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from support import (
    FINGERPRINT_SECRET,
    StartServer,
    free_port,
    log_events,
    make_config,
    scrape,
    value,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import RunningSandbox


async def test_no_metrics_endpoint_unless_configured(server: SmsServer) -> None:
    assert server.metrics_port == 0


# Every family the service exports, as Prometheus names it in the exposition.
FAMILIES = {
    "yunpian_sms_rpcs",
    "yunpian_sms_rpcs_in_flight",
    "yunpian_sms_sends",
    "yunpian_sms_yunpian_errors",
    "yunpian_sms_upstream_latency_seconds",
    "yunpian_sms_rate_limited",
    "yunpian_sms_idempotent_replays",
    "yunpian_sms_fee",
    "yunpian_sms_segments",
    "yunpian_sms_event_loop_lag_seconds",
    "yunpian_sms_store_failures_allowed",
    # grpc-ecosystem's names (go-grpc-prometheus), for any gRPC server's dashboards
    "grpc_server_started",
    "grpc_server_handled",
    "grpc_server_handling_seconds",
    # the process (prometheus_client's ProcessCollector and PlatformCollector)
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
    "python_info",
}
SERVICE = "yunpian.sms.v1.SmsService"


async def test_the_endpoint_describes_every_metric_before_any_traffic(
    start_server: StartServer,
) -> None:
    server = await start_server(make_config(server={"metrics_listen": "127.0.0.1:0"}))
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    described = {family.name for family in text_string_to_metric_families(text)}
    assert described >= FAMILIES
    assert all(f"# HELP {name}" in text for name in FAMILIES)
    async with aiohttp.ClientSession() as http, http.get(url + "x") as response:
        assert response.status == 404


async def test_two_servers_in_one_process_count_apart(start_server: StartServer) -> None:
    config = make_config(server={"metrics_listen": "127.0.0.1:0"})
    busy, idle = await start_server(config), await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{busy.port}") as client:
        await client.send_code("13800138000", "123456")
    rpcs = {"method": "SendCode", "grpc_code": "OK", "caller": "anonymous"}
    assert value(await scrape(busy), "yunpian_sms_rpcs_total", **rpcs) == 1
    assert value(await scrape(idle), "yunpian_sms_rpcs_total", **rpcs) == 0


async def test_sends_let_through_by_store_on_error_allow_are_counted(
    start_server: StartServer, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    config = make_config(
        server={"metrics_listen": "127.0.0.1:0"},
        store={"url": dead_redis, "on_error": "allow", "fingerprint_secret": FINGERPRINT_SECRET},
        limits={"per_phone": ["1/60s"]},
    )
    server = await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", retry=None) as client:
        sent = await client.send_code("13800138000", "123456", request_id="no-store")
        again = await client.send_code("13900139000", "123456")
    samples = await scrape(server)
    assert sent.message_id
    assert again.message_id
    assert len(sandbox.sandbox.messages) == 2
    # Four store operations failed (a claim and count, the record, a count), for two sends: the
    # metric counts the sends that went out despite the store.
    operations = [event["operation"] for event in log_events(log_output, "store_unavailable")]
    assert operations == ["start", "claim", "record", "acquire"]
    assert value(samples, "yunpian_sms_store_failures_allowed_total") == 2


def grpc_labels(method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method, **more}


async def test_rpcs_are_counted_under_the_grpc_ecosystems_names_and_labels(
    start_server: StartServer,
) -> None:
    server = await start_server(make_config(server={"metrics_listen": "127.0.0.1:0"}))
    before = await scrape(server)
    # Every method's series exist from the start, at zero, as go-grpc-prometheus makes them.
    for method in ("SendCode", "CheckVerification", "GetDeliveryStatus"):
        assert ("grpc_server_started_total", tuple(sorted(grpc_labels(method).items()))) in before
        handled = grpc_labels(method, grpc_code="OK")
        assert ("grpc_server_handled_total", tuple(sorted(handled.items()))) in before
        count = ("grpc_server_handling_seconds_count", tuple(sorted(handled.items())))
        assert before[count] == 0
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", retry=None) as client:
        await client.send_code("13800138000", "123456")
        with pytest.raises(SmsError):
            await client.send_code("not a phone", "123456")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        status_of = pb_grpc.SmsServiceStub(channel).GetDeliveryStatus
        with pytest.raises(grpc.aio.AioRpcError):  # delivery reports are off
            await status_of(pb.GetDeliveryStatusRequest(message_id="123"))
    after = await scrape(server)
    send_code = grpc_labels("SendCode")
    assert value(after, "grpc_server_started_total", **send_code) == 2
    assert value(after, "grpc_server_handled_total", **send_code, grpc_code="OK") == 1
    assert value(after, "grpc_server_handled_total", **send_code, grpc_code="InvalidArgument") == 1
    # The latency by method and code: the refusal's apart from the send's.
    for code in ("OK", "InvalidArgument"):
        assert value(after, "grpc_server_handling_seconds_count", **send_code, grpc_code=code) == 1
        bucket = value(
            after, "grpc_server_handling_seconds_bucket", **send_code, grpc_code=code, le="+Inf"
        )
        assert bucket == 1
        assert (
            0 < value(after, "grpc_server_handling_seconds_sum", **send_code, grpc_code=code) < 10
        )
    status = grpc_labels("GetDeliveryStatus", grpc_code="FailedPrecondition")
    assert value(after, "grpc_server_handled_total", **status) == 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_open_fds") > 0


async def test_the_endpoint_speaks_openmetrics_to_who_asks_for_it(
    start_server: StartServer,
) -> None:
    server = await start_server(make_config(server={"metrics_listen": "127.0.0.1:0"}))
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", retry=None) as client:
        await client.send_code("13800138000", "123456")
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    accept = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=accept) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await response.text()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics.text_string_to_metric_families(text)}
    assert set(families) >= FAMILIES
    assert families["grpc_server_handled"].type == "counter"
    assert families["grpc_server_handling_seconds"].type == "histogram"
    [sent] = [
        sample
        for sample in families["grpc_server_handled"].samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels == grpc_labels("SendCode", grpc_code="OK")
    ]
    assert sent.value == 1
    # Without that Accept header: Prometheus's text format (scrape() checks the type).
    assert value(await scrape(server), "grpc_server_started_total", **grpc_labels("SendCode")) == 1

"""Lifecycle: health, reflection, and graceful shutdown of the real `yunpian-sms serve` process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support import ServeProcess, StartServer, make_config

from yunpian_sms_client import AsyncSmsClient, DeliveryState, UnavailableError
from yunpian_sms_server.app import SANDBOX_PULL_INTERVAL_S, SmsServer, sandbox_delivery
from yunpian_sms_server.config import parse_config

SERVICE = "yunpian.sms.v1.SmsService"


async def test_health_reports_serving_for_the_server_and_the_service(server: SmsServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def reflected_service(target: str) -> tuple[list[str], list[str]]:
    """Asks the server, through reflection alone, for its services and SmsService's methods."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        return services, [method.name for method in pool.FindServiceByName(SERVICE).methods]


async def test_reflection_lists_and_describes_the_service(server: SmsServer) -> None:
    # A client with no copy of the proto learns the whole contract from the server. The sync
    # reflection client runs in a thread: the server shares this test's event loop.
    services, methods = await asyncio.to_thread(reflected_service, f"127.0.0.1:{server.port}")
    assert SERVICE in services
    assert methods == [
        "SendCode",
        "ValidateTemplate",
        "StartVerification",
        "CheckVerification",
        "CancelVerification",
        "GetDeliveryStatus",
    ]


async def test_stopping_refuses_new_rpcs_and_reports_not_serving(
    start_server: StartServer,
) -> None:
    # While it drains, the port stays open: the refusal is the server's own, not a closed port's.
    server = await start_server(make_config(server={"drain_seconds": 0.5}))
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel, AsyncSmsClient(target) as client:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        with pytest.raises(UnavailableError) as refused:
            await client.send_code("13800138000", "123456", timeout=2.0)
        await stopping
    assert refused.value.reason == "SHUTTING_DOWN"


@pytest.fixture
async def serve_process(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    config = tmp_path / "config.toml"
    config.write_text("[server]\ngrace_period_seconds = 5.0\n[limits]\nper_phone = []\n")
    process = ServeProcess.start(
        "--sandbox",
        "--listen",
        "127.0.0.1:0",
        "--config",
        str(config),
        directory=tmp_path / "serve",
        env={**os.environ, "YUNPIAN_API_KEY": ""},
    )
    yield process
    await process.kill()


async def test_sigterm_lets_in_flight_rpcs_finish_then_exits_0(serve_process: ServeProcess) -> None:
    serving = await serve_process.next_event("serving")
    target, sandbox_url = f"127.0.0.1:{serving['port']}", serving["sandbox"]
    async with aiohttp.ClientSession() as http, AsyncSmsClient(target) as client:
        fault = {"kind": "delay", "seconds": 1.5}
        async with http.post(f"{sandbox_url}/sandbox/faults", json=fault) as response:
            assert response.status == 200
        in_flight = asyncio.create_task(client.send_code("13800138000", "123456", timeout=10.0))
        while True:  # wait until the request has reached the sandbox
            async with http.get(f"{sandbox_url}/sandbox/stats") as response:
                stats = await response.json()
            if stats["requests"].get("/v2/sms/single_send.json"):
                break
            await asyncio.sleep(0.02)
        serve_process.terminate()
        sent = await in_flight
    assert int(sent.message_id) > 0
    assert await serve_process.wait(15.0) == 0
    await serve_process.next_event("stopped")
    assert "Traceback" not in serve_process.stderr
    [rpc] = [event for event in serve_process.events if event["event"] == "rpc"]
    assert rpc["grpc_code"] == "OK"


# --- serve --sandbox --------------------------------------------------------------------------


async def test_serving_on_the_sandbox_pulls_its_delivery_reports() -> None:
    # No [delivery] table: GetDeliveryStatus works out of the box, as with `make run`.
    server = SmsServer(make_config())
    await server.start(listen="127.0.0.1:0", sandbox=True)
    try:
        async with AsyncSmsClient(f"127.0.0.1:{server.port}", default_timeout=5.0) as client:
            sent = await client.send_code("13800138000", "123456")
            first = await client.get_delivery_status(sent.message_id)
            started = await client.start_verification("13900139000")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while (await client.get_delivery_status(sent.message_id)).state == first.state:
                assert loop.time() < deadline, "the report was never pulled"
                await asyncio.sleep(0.05)
            settled = await client.get_delivery_status(sent.message_id)
    finally:
        await server.stop()

    assert first.state == DeliveryState.DELIVERY_STATE_PENDING
    assert settled.state == DeliveryState.DELIVERY_STATE_DELIVERED
    assert started.delivery == DeliveryState.DELIVERY_STATE_PENDING
    assert server.sandbox is not None
    assert server.sandbox.sandbox.report_stats.pulled >= 1


@pytest.mark.parametrize(
    "table",
    [
        {},
        {"mode": "off"},
        {"mode": "pull", "pull_interval_seconds": 30.0, "pull_lease_seconds": 90.0},
        {"report_wait_seconds": 60.0},
    ],
    ids=str,
)
def test_serving_on_the_sandbox_keeps_a_delivery_table_of_the_config(
    table: dict[str, object],
) -> None:
    delivery = make_config(delivery=table).delivery

    assert delivery.configured
    assert sandbox_delivery(delivery) == delivery


def test_serving_on_the_sandbox_without_a_delivery_table_pulls_often() -> None:
    delivery = parse_config({}, env={}).delivery

    pulled = sandbox_delivery(delivery)

    assert not delivery.configured
    assert (delivery.mode, pulled.mode) == ("off", "pull")
    assert pulled.pull_interval_seconds == SANDBOX_PULL_INTERVAL_S
    assert pulled.pull_lease_seconds > pulled.pull_interval_seconds
    assert (pulled.listen, pulled.public_url) == ("", "")

"""Prometheus metrics, scraped over HTTP after real traffic."""

from __future__ import annotations

import io

import pytest
from support import FINGERPRINT_SECRET, StartServer, log_events, make_config, scrape, value

from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import Fault, RunningSandbox


@pytest.fixture
async def metered(start_server: StartServer, sandbox: RunningSandbox) -> SmsServer:
    sandbox.sandbox.enforce_limits = False
    config = make_config(server={"metrics_listen": "127.0.0.1:0"}, limits={"per_phone": ["2/1h"]})
    return await start_server(config)


async def test_metrics_count_rpcs_sends_errors_limits_replays_fees_and_latency(
    metered: SmsServer, sandbox: RunningSandbox
) -> None:
    async with AsyncSmsClient(f"127.0.0.1:{metered.port}", retry=None) as client:
        await client.send_code("13800138000", "123456", usage_type="SignIn", request_id="a")
        await client.send_code("13800138000", "123456", usage_type="SignIn", request_id="a")
        await client.send_code("+14155552671", "123456")
        sandbox.sandbox.inject(Fault(kind="error", code=22))
        with pytest.raises(SmsError):
            await client.send_code("13900139000", "123456")
        with pytest.raises(SmsError):
            await client.send_code("not a phone", "123456")
        await client.send_code("13800138000", "654321", usage_type="SignIn")
        with pytest.raises(SmsError):  # the third send to this number within the hour
            await client.send_code("13800138000", "111111", usage_type="SignIn")
        await client.validate_template(content="验证码{{code}}", skip_remote=True)
    samples = await scrape(metered)
    rpcs, anonymous = "yunpian_sms_rpcs_total", {"caller": "anonymous"}
    assert value(samples, rpcs, method="SendCode", grpc_code="OK", **anonymous) == 4
    assert value(samples, rpcs, method="SendCode", grpc_code="RESOURCE_EXHAUSTED", **anonymous) == 2
    assert value(samples, rpcs, method="SendCode", grpc_code="INVALID_ARGUMENT", **anonymous) == 1
    assert value(samples, rpcs, method="ValidateTemplate", grpc_code="OK", **anonymous) == 1
    sends = "yunpian_sms_sends_total"
    assert value(samples, sends, usage_type="SignIn", international="false", outcome="OK") == 3
    assert value(samples, sends, usage_type="Generic", international="true", outcome="OK") == 1
    assert (
        value(
            samples,
            sends,
            usage_type="Generic",
            international="false",
            outcome="PROVIDER_RATE_LIMITED",
        )
        == 1
    )
    assert (
        value(samples, sends, usage_type="", international="", outcome="INVALID_PHONE_NUMBER") == 1
    )
    assert value(samples, "yunpian_sms_yunpian_errors_total", yunpian_code="22") == 1
    assert value(samples, "yunpian_sms_rate_limited_total", scope="phone") == 1
    assert value(samples, "yunpian_sms_rate_limited_total", scope="yunpian") == 1
    assert value(samples, "yunpian_sms_idempotent_replays_total") == 1
    sent = len(sandbox.sandbox.messages)
    assert sent == 3
    assert value(samples, "yunpian_sms_segments_total") == sent
    assert value(samples, "yunpian_sms_fee_total", unit="RMB") == pytest.approx(0.05 * sent)
    latency = "yunpian_sms_upstream_latency_seconds_count"
    assert value(samples, latency, path="/v2/sms/single_send.json") == 4  # 3 sent, 1 refused
    assert value(samples, "yunpian_sms_rpcs_in_flight", method="SendCode") == 0


async def test_no_metrics_endpoint_unless_configured(server: SmsServer) -> None:
    assert server.metrics_port == 0


async def test_rpcs_are_counted_per_authenticated_caller(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    from yunpian_sms_server.auth import hash_token

    auth = {"callers": {"checkout": {"token_sha256": hash_token("t0k")}}}
    config = make_config(server={"metrics_listen": "127.0.0.1:0"}, auth=auth)
    server = await start_server(config)
    target = f"127.0.0.1:{server.port}"
    async with AsyncSmsClient(target, metadata=[("authorization", "Bearer t0k")]) as client:
        await client.send_code("13800138000", "123456")
    async with AsyncSmsClient(target, retry=None) as stranger:
        with pytest.raises(SmsError):
            await stranger.send_code("13800138000", "123456")
    samples = await scrape(server)
    rpcs = "yunpian_sms_rpcs_total"
    assert value(samples, rpcs, method="SendCode", grpc_code="OK", caller="checkout") == 1
    assert value(samples, rpcs, method="SendCode", grpc_code="UNAUTHENTICATED", caller="") == 1


async def test_sends_let_through_by_store_on_error_allow_are_counted(
    start_server: StartServer, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    from support import free_port

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

"""Structured logging (logs.py): the running RPC's fields on every event, and no secret in any
log line."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from support import log_events

from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.logs import log_rpc_record
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox

CODE = "SeCr3t99"


async def test_no_log_line_holds_the_api_key_the_code_the_text_or_a_whole_number(
    log_output: io.StringIO, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code("13800138000", CODE)
    for fault in (Fault(kind="error", code=2), Fault(kind="drop"), Fault(kind="error", code=33)):
        sandbox.sandbox.inject(fault)
        with pytest.raises(SmsError):
            await client.send_code("13900139000", CODE)
    with pytest.raises(SmsError):
        await client.send_code("13700137000", "bad code!")
    output = log_output.getvalue()
    assert len(log_events(log_output, "rpc")) == 5
    for secret in (SANDBOX_API_KEY, CODE, "bad code!", "验证码", "13800138000", "13900139000"):
        assert secret not in output
    assert "139****9000" in output


def test_the_secret_filter_drops_secret_keys_bound_by_mistake(log_output: io.StringIO) -> None:
    structlog.get_logger().info("oops", code=CODE, api_key=SANDBOX_API_KEY, text="hi", kept=1)
    [event] = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert event == {**event, "kept": 1}
    assert not {"code", "api_key", "text"} & set(event)


def test_events_logged_during_an_rpc_carry_its_record_and_keep_their_own_keys(
    log_output: io.StringIO,
) -> None:
    log = structlog.get_logger()
    log_rpc_record(RpcRecord("req-7", caller="checkout", phone="138****8000"))
    try:
        log.info("during", caller="overridden")
    finally:
        log_rpc_record(None)
    log.info("after")
    during, after = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert during["request_id"] == "req-7"
    assert during["phone"] == "138****8000"
    assert during["caller"] == "overridden"
    assert set(RpcRecord("x").fields()) <= set(during)
    assert "request_id" not in after

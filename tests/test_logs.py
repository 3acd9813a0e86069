"""Structured logging (logs.py): the running RPC's fields on every event, and no secret in any
log line."""

from __future__ import annotations

import io
import json
import re

import pytest
import structlog
from support import StartServer, log_events, make_config

from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.logs import log_rpc_record
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox
from yunpian_sms_server.yunpian import REDACTED

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


# A YunPian answer that repeats the request: the text (and so the code), the key, the number.
ECHOING_DETAIL = "refused: text={text} apikey={apikey} mobile={mobile}"


def error_words(error: SmsError) -> str:
    """Everything an error tells its caller: message, metadata and every detail."""
    return " ".join([str(error), *error.metadata.values(), *(str(d) for d in error.details)])


async def test_a_yunpian_answer_repeating_the_request_loses_its_secrets(
    log_output: io.StringIO, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=2, detail=ECHOING_DETAIL))
    with pytest.raises(SmsError) as raised:
        await client.send_code("13900139000", CODE)
    told = error_words(raised.value)
    assert raised.value.metadata["yunpian_detail"].startswith("refused: text=")
    assert told.count(REDACTED) >= 2  # the code and the key, each where it stood
    for secret in (SANDBOX_API_KEY, CODE, "13900139000"):
        assert secret not in told
        assert secret not in log_output.getvalue()


async def test_a_verification_code_repeated_by_yunpian_reaches_no_caller_and_no_log(
    log_output: io.StringIO, start_server: StartServer, sandbox: RunningSandbox
) -> None:
    verify = {"enabled": True, "secret": "test-verify-secret-0123456789abcdef0123"}
    server = await start_server(make_config(verify=verify))
    sandbox.sandbox.inject(Fault(kind="error", code=2, detail=ECHOING_DETAIL))
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", default_timeout=5.0) as sms:
        with pytest.raises(SmsError) as raised:
            await sms.start_verification("13900139000")
    told = error_words(raised.value)
    # The text came back with its code in place (the sandbox quoted it): redacted, no digits.
    quoted = raised.value.metadata["yunpian_detail"]
    assert re.search(r"text=\S*\[redacted\]", quoted), quoted
    # No run of six digits anywhere but in the log lines' times and ids.
    ids = {"timestamp", "request_id", "trace_id", "verification_id", "port", "listen", "yunpian"}
    logged = [json.loads(line) for line in log_output.getvalue().splitlines()]
    untimed = json.dumps([{k: v for k, v in e.items() if k not in ids} for e in logged])
    found = re.search(r"\d{6}", told + untimed)
    assert found is None, (told + untimed)[max(found.start() - 100, 0) : found.end() + 50]
    assert SANDBOX_API_KEY not in told + untimed

"""Structured logging (logs.py): the running RPC's fields on every event, no secret in any
log line, the standard library's records rendered alike, the level, and `serve`'s output as
JSON lines, every one of them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import structlog
from support import StartServe, StartServer, eventually, free_port, log_events, make_config

from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.logs import LibraryHandler, configure_logging, log_rpc_record
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


def test_a_records_fields_are_its_dataclass_fields_in_order() -> None:
    record = RpcRecord("req-7", caller="checkout", international=True, segments=2, fee="0.05")
    assert list(record.fields().items()) == list(asdict(record).items())


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


@pytest.fixture
def reconfigure(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Lets a test call configure_logging itself (after capsys took stderr); undone after."""
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_library_records_are_json_lines_on_stderr_with_the_same_keys(
    reconfigure: None, capsys: pytest.CaptureFixture[str]
) -> None:
    events = io.StringIO()
    configure_logging("json", events, cache=False)
    structlog.get_logger().warning("ours", kept=1)
    log_rpc_record(RpcRecord("req-9", phone="138****8000"))
    try:
        try:
            raise ValueError("bad header")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")
    finally:
        log_rpc_record(None)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    logging.getLogger("grpc._cython.cygrpc").debug("below the level")
    [ours] = [json.loads(line) for line in events.getvalue().splitlines()]
    lines = capsys.readouterr().err.splitlines()
    library, warned = [json.loads(line) for line in lines]
    assert set(ours) - {"kept"} <= set(library)
    assert library["event"] == "Error handling request from x"
    assert library["level"] == "error"
    assert library["logger"] == "aiohttp.server"
    assert library["timestamp"].endswith("Z")
    assert library["exception"].startswith("Traceback")
    assert "ValueError: bad header" in library["exception"]
    assert library["request_id"] == "req-9"  # logged while the RPC ran: its fields
    assert (warned["logger"], warned["level"]) == ("py.warnings", "warning")
    assert "DeprecationWarning: an old API" in warned["event"]


def test_the_level_applies_to_events_and_library_records_alike(
    reconfigure: None, capsys: pytest.CaptureFixture[str]
) -> None:
    events = io.StringIO()
    configure_logging("json", events, level="warning", cache=False)
    log = structlog.get_logger()
    log.info("dropped")
    log.warning("kept")
    logging.getLogger("aiohttp.client").info("dropped too")
    logging.getLogger("aiohttp.client").warning("kept too")
    assert [json.loads(line)["event"] for line in events.getvalue().splitlines()] == ["kept"]
    library = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert library == ["kept too"]
    # At info, libraries still log from warning up (an access log line per request is noise);
    # at debug, everything.
    for level, shown in (("info", ["warned"]), ("debug", ["informed", "warned"])):
        configure_logging("json", io.StringIO(), level=level, cache=False)
        logging.getLogger("aiohttp.access").info("informed")
        logging.getLogger("aiohttp.access").warning("warned")
        library = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
        assert library == shown


def test_the_console_shows_no_key_whose_value_is_none(reconfigure: None) -> None:
    events = io.StringIO()
    configure_logging("console", events, cache=False)
    log_rpc_record(RpcRecord("req-7", caller="checkout"))
    try:
        structlog.get_logger().info("rpc", reason=None, grpc_code="OK")
    finally:
        log_rpc_record(None)
    [line] = events.getvalue().splitlines()
    assert "request_id=req-7" in line
    assert "caller=checkout" in line
    assert "grpc_code=OK" in line
    assert "None" not in line


async def test_serve_with_json_writes_nothing_but_json_lines_library_tracebacks_included(
    start_serve: StartServe,
) -> None:
    metrics_port = free_port()
    config = {
        "server": {"metrics_listen": f"127.0.0.1:{metrics_port}"},
        "limits": {"per_phone": []},
    }
    serve = await start_serve(config, "--sandbox", "--log-level", "debug")
    async with AsyncSmsClient(serve.target, retry=None) as client:
        await client.send_code("13800138000", "123456")
    # A request aiohttp cannot parse: its server logs the error with a traceback (and answers
    # 400), as it would for any broken client that reaches the metrics port.
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    await eventually(lambda: "aiohttp.server" in serve.stderr)
    serve.terminate()
    assert await serve.wait(15.0) == 0
    stdout = serve.stdout_path.read_text(encoding="utf-8").splitlines()
    stderr = serve.stderr.splitlines()
    parsed = [json.loads(line) for line in stdout + stderr]  # every line, or it fails here
    assert all({"event", "level", "timestamp"} <= set(line) for line in parsed)
    library = [json.loads(line) for line in stderr]
    [aiohttp_error] = [line for line in library if line.get("logger") == "aiohttp.server"]
    assert aiohttp_error["level"] == "error"
    assert aiohttp_error["exception"].startswith("Traceback")
    assert "Content-Length" in aiohttp_error["exception"]
    # --log-level debug reaches the libraries: asyncio says which selector its loop uses.
    assert any(line.get("logger") == "asyncio" and line["level"] == "debug" for line in library)
    assert [line["event"] for line in parsed if line["event"] in ("rpc", "stopped")] == [
        "rpc",
        "stopped",
    ]


async def test_secrets_repeated_in_another_case_or_inside_the_number_are_hidden_too(
    log_output: io.StringIO, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    told = []
    # The code is part of the number sent to: hiding it must not unmask the number.
    sandbox.sandbox.inject(Fault(kind="error", code=2, detail="mobile={mobile} text={text}"))
    with pytest.raises(SmsError) as inside:
        await client.send_code("13812345678", "3812")
    told.append(error_words(inside.value))
    # The code and the key repeated in another case.
    detail = f"code=ab3812cd key={SANDBOX_API_KEY.upper()}"
    sandbox.sandbox.inject(Fault(kind="error", code=2, detail=detail))
    with pytest.raises(SmsError) as cased:
        await client.send_code("13900139000", "AB3812CD")
    told.append(error_words(cased.value))
    assert "mobile=138****5678 text=" in inside.value.metadata["yunpian_detail"]
    assert cased.value.metadata["yunpian_detail"] == f"code={REDACTED} key={REDACTED}"
    for secret in ("3812", "ab3812cd", SANDBOX_API_KEY.upper(), "13812345678"):
        assert secret not in " ".join(told)
        assert secret not in log_output.getvalue()

"""The YunPian HTTP client (yunpian.py) against the sandbox over loopback: what an accepted send
returns, how every transport fault is classified (nothing sent, or maybe sent), the deadline
budget, and YunPian's answer codes turned into errors (`provider_error`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final
from urllib.parse import quote_plus, urlencode

import aiohttp
import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st
from support import (
    GENERIC_TEMPLATE,
    PROVIDER_STATUS_CODES,
    YUNPIAN_CODE_TABLE,
    free_port,
    single_sends,
    tpl_gets,
    unreachable_yunpian,
)

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox
from yunpian_sms_server.statuses import status_code
from yunpian_sms_server.yunpian import (
    CONNECT_ATTEMPTS,
    CONNECT_RETRY_BACKOFF_S,
    DEADLINE_MARGIN_S,
    MIN_UPSTREAM_BUDGET_S,
    SINGLE_SEND_PATH,
    TEMPLATES_PATH,
    SendAttempt,
    SendResult,
    YunpianClient,
    form_body,
    open_session,
    provider_error,
)

PHONE: Final = "13800138000"
MASKED: Final = "138****8000"
TEXT: Final = GENERIC_TEMPLATE.replace("{{code}}", "123456")
TIMEOUT_S: Final = 2.0
# How late the event loop may notice a timer on a busy machine.
SLACK_S: Final = 0.15

# start(body, status=200) -> the base URL of a loopback server giving that answer to every call.
StartAnswering = Callable[..., Awaitable[str]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_session(TIMEOUT_S) as opened:
        yield opened


def client_to(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str = SANDBOX_API_KEY,
    timeout_s: float = TIMEOUT_S,
    on_latency: Callable[[str, float], None] | None = None,
) -> YunpianClient:
    return YunpianClient(
        session, base_url=base_url, api_key=api_key, timeout_s=timeout_s, on_latency=on_latency
    )


@pytest.fixture
def yunpian(session: aiohttp.ClientSession, sandbox: RunningSandbox) -> YunpianClient:
    return client_to(session, sandbox.url)


@pytest.fixture
async def answering() -> AsyncIterator[StartAnswering]:
    """Loopback HTTP servers that answer every API call with one fixed body: answers the
    sandbox never gives."""
    runners: list[web.AppRunner] = []

    async def start(body: str | bytes, status: int = 200) -> str:
        raw = body.encode() if isinstance(body, str) else body

        async def answer(_request: web.Request) -> web.Response:
            return web.Response(status=status, body=raw, content_type="application/json")

        app = web.Application()
        app.router.add_post(SINGLE_SEND_PATH, answer)
        app.router.add_post(TEMPLATES_PATH, answer)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def send(
    yunpian: YunpianClient,
    *,
    time_remaining: float | None = None,
    attempt: SendAttempt | None = None,
) -> SendResult:
    return await yunpian.single_send(
        PHONE, TEXT, subject=MASKED, time_remaining=time_remaining, attempt=attempt
    )


async def refused(
    yunpian: YunpianClient,
    *,
    time_remaining: float | None = None,
    attempt: SendAttempt | None = None,
) -> ServiceError:
    """The ServiceError a send ends with."""
    with pytest.raises(ServiceError) as caught:
        await send(yunpian, time_remaining=time_remaining, attempt=attempt)
    return caught.value


# --- an accepted send -------------------------------------------------------------------------


async def test_an_accepted_send_returns_the_sid_count_fee_and_unit_of_the_sandboxs_answer(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    result = await send(yunpian)
    [message] = sandbox.sandbox.messages
    assert result == SendResult(sid=str(message.sid), mobile=PHONE, count=1, fee="0.05", unit="RMB")
    assert (message.mobile, message.code) == (PHONE, "123456")
    assert message.text.endswith(TEXT)


async def test_the_sid_and_fee_stay_exactly_as_yunpian_wrote_them(
    session: aiohttp.ClientSession, answering: StartAnswering
) -> None:
    # A sid past 2**53 is no float's, and "0.050" would be 0.05 as a float.
    body = (
        '{"code":0,"msg":"发送成功","count":2,"fee":0.050,"unit":"RMB",'
        '"mobile":"13800138000","sid":9007199254740993}'
    )
    result = await send(client_to(session, await answering(body)))
    assert result == SendResult(
        sid="9007199254740993", mobile=PHONE, count=2, fee="0.050", unit="RMB"
    )


async def test_an_answer_without_mobile_or_unit_falls_back_to_the_number_sent(
    session: aiohttp.ClientSession, answering: StartAnswering
) -> None:
    url = await answering('{"code":0,"msg":"发送成功","count":1,"fee":"0.05","sid":7}')
    result = await send(client_to(session, url))
    assert result == SendResult(sid="7", mobile=PHONE, count=1, fee="0.05", unit="")


async def test_the_latency_of_every_answered_call_is_reported_with_its_path(
    session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    latencies: list[tuple[str, float]] = []
    yunpian = client_to(
        session, sandbox.url, on_latency=lambda path, s: latencies.append((path, s))
    )
    await send(yunpian)
    sandbox.sandbox.inject(Fault(kind="error", code=22))
    await refused(yunpian)  # an answer, though a refusal
    sandbox.sandbox.inject(Fault(kind="drop"))
    await refused(yunpian)  # no answer: no latency
    await yunpian.templates(time_remaining=None)
    assert [path for path, _ in latencies] == [SINGLE_SEND_PATH, SINGLE_SEND_PATH, TEMPLATES_PATH]
    assert all(0 < seconds < TIMEOUT_S for _, seconds in latencies)


# --- transport faults: nothing sent, or maybe sent -----------------------------------------------


async def test_a_refused_connection_is_retried_then_unreachable_with_nothing_sent(
    session: aiohttp.ClientSession,
) -> None:
    attempt = SendAttempt()
    started = time.monotonic()
    error = await refused(client_to(session, f"http://127.0.0.1:{free_port()}"), attempt=attempt)
    elapsed = time.monotonic() - started
    assert error.reason is Reason.PROVIDER_UNREACHABLE
    assert error.metadata["error"] == "ClientConnectorError"
    assert not error.delivery_unknown
    assert not attempt.connected
    # Each retry waited its backoff first.
    backoffs = sum(CONNECT_RETRY_BACKOFF_S * tries for tries in range(1, CONNECT_ATTEMPTS))
    assert elapsed >= backoffs - 0.01


async def test_retries_of_a_refused_connection_stop_at_the_deadline_with_nothing_sent(
    session: aiohttp.ClientSession,
) -> None:
    time_remaining = DEADLINE_MARGIN_S + CONNECT_RETRY_BACKOFF_S * 2
    started = time.monotonic()
    error = await refused(
        client_to(session, f"http://127.0.0.1:{free_port()}"), time_remaining=time_remaining
    )
    assert time.monotonic() - started < time_remaining
    assert error.reason is Reason.PROVIDER_TIMEOUT
    assert "nothing was sent" in error.message
    assert not error.delivery_unknown


async def test_a_connect_that_never_completes_is_unreachable_not_maybe_sent(
    session: aiohttp.ClientSession,
) -> None:
    attempt = SendAttempt()
    started = time.monotonic()
    with unreachable_yunpian() as url:
        error = await refused(client_to(session, url, timeout_s=0.3), attempt=attempt)
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert error.reason is Reason.PROVIDER_UNREACHABLE
    assert not error.delivery_unknown
    assert not attempt.connected


async def test_a_connection_lost_after_the_request_left_is_maybe_sent_and_not_retried(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="drop"))
    attempt = SendAttempt()
    error = await refused(yunpian, attempt=attempt)
    assert error.reason is Reason.PROVIDER_CONNECTION_LOST
    assert error.delivery_unknown
    assert attempt.connected
    assert single_sends(sandbox) == 1


async def test_no_answer_within_the_timeout_is_maybe_sent_and_not_retried(
    session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.6))
    attempt = SendAttempt()
    started = time.monotonic()
    error = await refused(client_to(session, sandbox.url, timeout_s=0.3), attempt=attempt)
    assert 0.3 - 0.01 <= time.monotonic() - started < 0.3 + SLACK_S
    assert error.reason is Reason.PROVIDER_TIMEOUT
    assert error.delivery_unknown
    assert attempt.connected
    assert single_sends(sandbox) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_http_5xx_without_an_api_answer_is_unavailable_and_sent_nothing(
    yunpian: YunpianClient, sandbox: RunningSandbox, status: int
) -> None:
    sandbox.sandbox.inject(Fault(kind="http_status", status=status))
    error = await refused(yunpian)
    assert error.reason is Reason.PROVIDER_UNAVAILABLE
    assert error.metadata["http_status"] == str(status)
    assert not error.delivery_unknown


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="http_status", status=404),
        Fault(kind="malformed", body="not_json"),
        Fault(kind="malformed", body="wrong_shape"),
    ],
)
async def test_an_answer_that_is_not_the_documented_json_is_a_bad_response_maybe_sent(
    yunpian: YunpianClient, sandbox: RunningSandbox, fault: Fault
) -> None:
    sandbox.sandbox.inject(fault)
    error = await refused(yunpian)
    assert error.reason is Reason.PROVIDER_BAD_RESPONSE
    assert error.delivery_unknown


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"code":0,"msg":"发送成功","count":1,"fee":0.05}', "lacks the documented fields"),
        ('{"code":0,"sid":"76815478050","count":1,"fee":0.05}', "lacks the documented fields"),
        ('{"code":0,"sid":1,"count":true,"fee":0.05}', "lacks the documented fields"),
        ("[]", "lacks the documented fields"),
        ('{"code":"0","sid":1}', "is not the documented JSON"),
        ('{"code":0.5}', "is not the documented JSON"),
        (b"\xff\xfe", "is not the documented JSON"),
    ],
)
async def test_an_acceptance_without_the_documented_fields_is_a_bad_response_maybe_sent(
    session: aiohttp.ClientSession, answering: StartAnswering, body: str | bytes, why: str
) -> None:
    error = await refused(client_to(session, await answering(body)))
    assert error.reason is Reason.PROVIDER_BAD_RESPONSE
    assert why in error.message
    assert error.delivery_unknown


async def test_an_answer_nested_past_the_recursion_limit_is_a_bad_response(
    session: aiohttp.ClientSession, answering: StartAnswering
) -> None:
    # JSON that deep makes the decoder raise RecursionError, not ValueError: once INTERNAL.
    error = await refused(client_to(session, await answering("[" * 100_000 + "]" * 100_000)))
    assert error.reason is Reason.PROVIDER_BAD_RESPONSE
    assert error.delivery_unknown


# --- the deadline budget ------------------------------------------------------------------------


async def test_a_deadline_too_close_to_reach_yunpian_sends_nothing(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    error = await refused(yunpian, time_remaining=DEADLINE_MARGIN_S + MIN_UPSTREAM_BUDGET_S / 2)
    assert error.reason is Reason.PROVIDER_TIMEOUT
    assert "nothing was sent" in error.message
    assert not error.delivery_unknown
    assert single_sends(sandbox) == 0


async def test_a_call_gives_up_a_margin_before_the_callers_deadline(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    # The configured timeout (2 s) is longer than the caller's deadline: the deadline wins.
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.8))
    time_remaining = 0.5
    started = time.monotonic()
    error = await refused(yunpian, time_remaining=time_remaining)
    elapsed = time.monotonic() - started
    assert time_remaining - DEADLINE_MARGIN_S - 0.01 <= elapsed < time_remaining
    assert error.reason is Reason.PROVIDER_TIMEOUT
    assert error.delivery_unknown


async def test_the_configured_timeout_caps_a_longer_deadline(
    session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.6))
    started = time.monotonic()
    error = await refused(client_to(session, sandbox.url, timeout_s=0.3), time_remaining=60.0)
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert error.reason is Reason.PROVIDER_TIMEOUT


def test_the_budget_is_the_timeout_or_the_deadline_less_the_margin(
    session: aiohttp.ClientSession,
) -> None:
    yunpian = client_to(session, "http://127.0.0.1:1", timeout_s=TIMEOUT_S)
    assert yunpian.budget_s(None) == TIMEOUT_S
    assert yunpian.budget_s(TIMEOUT_S * 10) == TIMEOUT_S
    assert yunpian.budget_s(1.0) == pytest.approx(1.0 - DEADLINE_MARGIN_S)


# --- YunPian's refusals --------------------------------------------------------------------------


async def test_a_refusal_becomes_its_error_with_every_phone_number_masked(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=33))  # its detail names the number
    error = await refused(yunpian)
    assert error.reason is Reason.PROVIDER_RATE_LIMITED
    assert error.yunpian_code == 33
    assert error.retry_after_s == 30.0
    assert error.quota is not None
    assert error.quota.subject == MASKED
    assert MASKED in error.metadata["yunpian_detail"]
    assert PHONE not in repr(error.metadata) + error.message + error.quota.description
    assert not error.delivery_unknown


async def test_a_wrong_api_key_is_provider_auth_failed_without_the_key(
    session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    wrong_key = "f" * 32
    error = await refused(client_to(session, sandbox.url, api_key=wrong_key))
    assert (error.reason, error.yunpian_code) == (Reason.PROVIDER_AUTH_FAILED, -1)
    assert wrong_key not in error.message + repr(error.metadata)
    assert sandbox.sandbox.messages == []


# --- the account's templates --------------------------------------------------------------------


async def test_templates_lists_the_accounts_templates_as_yunpian_wrote_them(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    listed = await yunpian.templates(time_remaining=None)
    assert [(item["tpl_id"], item["tpl_content"]) for item in listed] == [
        (template.tpl_id, template.content) for template in sandbox.sandbox.templates
    ]
    assert {item["check_status"] for item in listed} == {"SUCCESS"}
    assert tpl_gets(sandbox) == 1


@pytest.mark.parametrize("body", ['{"code":0}', "[1]", '[{"tpl_id":1}, "x"]'])
async def test_a_template_list_that_is_not_a_list_of_objects_is_a_bad_response(
    session: aiohttp.ClientSession, answering: StartAnswering, body: str
) -> None:
    with pytest.raises(ServiceError) as caught:
        await client_to(session, await answering(body)).templates(time_remaining=None)
    assert caught.value.reason is Reason.PROVIDER_BAD_RESPONSE


async def test_a_refused_template_list_raises_the_error_of_its_code(
    yunpian: YunpianClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=-5, path=TEMPLATES_PATH))
    with pytest.raises(ServiceError) as caught:
        await yunpian.templates(time_remaining=None)
    assert (caught.value.reason, caught.value.yunpian_code) == (Reason.PROVIDER_QUOTA_EXCEEDED, -5)


# --- what YunPian's answer codes mean (provider_error) -------------------------------------------


@pytest.mark.parametrize(("yunpian_code", "expected"), sorted(YUNPIAN_CODE_TABLE.items()))
def test_provider_error_follows_the_answer_code_table(
    yunpian_code: int, expected: tuple[Reason, float | None]
) -> None:
    reason, delay = expected
    error = provider_error(yunpian_code, "msg", "detail", "138****8000")
    assert error.reason is reason
    assert status_code(error) is PROVIDER_STATUS_CODES[reason]
    assert error.retry_after_s == delay
    assert error.metadata["yunpian_code"] == str(yunpian_code)
    assert error.yunpian_code == yunpian_code


def test_code_2_about_the_mobile_is_a_phone_rejection_with_a_field_violation() -> None:
    error = provider_error(2, "请求参数格式错误", "参数 mobile 格式不正确，mobile:189****4497", "x")
    assert error.reason is Reason.PROVIDER_PHONE_REJECTED
    assert error.field_violation is not None
    assert error.field_violation.field == "phone_number"


def test_code_2_about_another_parameter_is_our_own_malformed_request() -> None:
    error = provider_error(2, "请求参数格式错误", "参数 text 格式不正确", "x")
    assert error.reason is Reason.PROVIDER_REJECTED_REQUEST


@given(
    form=st.dictionaries(
        st.sampled_from(["mobile", "text", "callback_url", "page_size"]), st.text()
    ),
    api_key=st.text(),
)
@example(
    form={
        "mobile": "+85261234567",
        "text": "【签名】您的验证码是1a2B。如非本人操作, 请忽略 ~_.-%+&=",
    },
    api_key="0123456789abcdef",
)
def test_the_form_is_encoded_as_urlencode_encodes_it(form: dict[str, str], api_key: str) -> None:
    try:
        expected = urlencode({"apikey": api_key, **form}).encode()
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            form_body(form, f"apikey={quote_plus(api_key)}")
        return
    assert form_body(form, f"apikey={quote_plus(api_key)}") == expected

"""The sandbox's delivery reports (状态报告) over real loopback sockets: pulled once through
pull_status.json, or pushed to a send's callback_url (a receiver in the test) with retries."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import aiohttp
import pytest
from aiohttp import web
from support import FakeClock

from yunpian_sms_server.sandbox import (
    DEFAULT_SIGNATURE,
    FIRST_SID,
    PULL_STATUS_PATH,
    SANDBOX_API_KEY,
    SINGLE_SEND_PATH,
    DeliveryReport,
    Fault,
    ReportSettings,
    RunningSandbox,
    Sandbox,
    SandboxInputError,
    SandboxTemplate,
    delivery_reports,
    start_sandbox,
)

MOBILE = "13800138000"
START_TIME = 1_700_000_000.0  # 2023-11-15 06:13:20 in China (UTC+8)
REPORT_KEYS = {
    "sid",
    "uid",
    "user_receive_time",
    "error_msg",
    "mobile",
    "report_status",
    "error_detail",
}
# How long a test waits for the push task to do something (it looks every 0.05 s).
PUSH_WAIT_S = 5.0


def mobile(n: int) -> str:
    return f"1380013{n:04d}"


def make_templates() -> list[SandboxTemplate]:
    return [
        SandboxTemplate(1001, DEFAULT_SIGNATURE + "您的验证码是#code#。"),
        SandboxTemplate(2002, "Your login code: #code#", country_code="ALL", lang="en"),
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START_TIME)


@pytest.fixture
def sandbox(clock: FakeClock) -> Sandbox:
    # No per-number limits: the tests send many messages to a number at one (fake) time.
    return Sandbox(templates=make_templates(), enforce_limits=False, clock=clock)


@pytest.fixture
async def running(sandbox: Sandbox) -> AsyncIterator[RunningSandbox]:
    served = await start_sandbox(sandbox)
    try:
        yield served
    finally:
        await served.close()


@pytest.fixture
def url(running: RunningSandbox) -> str:
    return running.url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, url: str, to: str = MOBILE, code: str = "1234", **extra: str
) -> dict[str, Any]:
    text = f"Your login code: {code}" if to.startswith("+") else f"您的验证码是{code}。"
    form = {"apikey": SANDBOX_API_KEY, "mobile": to, "text": text, **extra}
    async with http.post(url + SINGLE_SEND_PATH, data=form) as resp:
        body: dict[str, Any] = await resp.json()
    assert body["code"] == 0, body
    return body


async def pull_raw(
    http: aiohttp.ClientSession, url: str, *, apikey: str = SANDBOX_API_KEY, **extra: str
) -> tuple[int, str, str]:
    async with http.post(url + PULL_STATUS_PATH, data={"apikey": apikey, **extra}) as resp:
        return resp.status, resp.content_type, await resp.text()


async def pull(http: aiohttp.ClientSession, url: str, **extra: str) -> list[dict[str, Any]]:
    status, _, text = await pull_raw(http, url, **extra)
    assert status == 200, text
    reports: list[dict[str, Any]] = json.loads(text)
    return reports


async def control(
    http: aiohttp.ClientSession, method: str, url: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with http.request(method, url + path, json=body) as resp:
        return resp.status, json.loads(await resp.text())


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PUSH_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- a receiver of pushes -------------------------------------------------------------------


@dataclass
class Push:
    content_type: str
    accept: str
    body: bytes

    @property
    def reports(self) -> list[dict[str, Any]]:
        """sms_status decoded: the JSON array of reports."""
        form = parse_qs(self.body.decode("ascii"), strict_parsing=True)
        assert list(form) == ["sms_status"]
        [sms_status] = form["sms_status"]
        reports: list[dict[str, Any]] = json.loads(sms_status)
        return reports


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A callback URL's server: records every push; answers SUCCESS unless `answers` say else."""

    url: str = ""
    pushes: list[Push] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.pushes.append(
            Push(request.headers["Content-Type"], request.headers["Accept"], await request.read())
        )
        if self.answers:
            return await self.answers.pop(0)(request)
        return web.Response(text="SUCCESS")

    @property
    def reports(self) -> list[dict[str, Any]]:
        return [report for push in self.pushes for report in push.reports]


def answer_with(text: str, status: int = 200) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=status)

    return answer


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/callback", found.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"http://127.0.0.1:{port}/callback?token=t0ps3cret"
    try:
        yield found
    finally:
        await runner.cleanup()


# -- single_send keeps uid and callback_url -------------------------------------------------


async def test_single_send_keeps_uid_and_callback_url_with_the_message(sandbox, url, http):
    callback = "http://127.0.0.1:9/yunpian/reports?k=1"  # the clock stays: never pushed
    await send(http, url, uid="order-42", callback_url=callback)
    await send(http, url, code="5678")

    first, second = sandbox.messages
    assert (first.uid, first.callback_url) == ("order-42", callback)
    assert (second.uid, second.callback_url) == (None, None)
    _, listed = await control(http, "GET", url, "/sandbox/messages")
    assert (listed["messages"][0]["uid"], listed["messages"][0]["callback_url"]) == (
        "order-42",
        callback,
    )


@pytest.mark.parametrize(
    "callback_url",
    ["example.com/cb", "ftp://example.com/cb", "http://", "http://a b/", "http://h:x/"],
)
async def test_single_send_refuses_a_callback_url_that_is_no_http_url_with_code_2(
    sandbox, url, http, callback_url
):
    form = {
        "apikey": SANDBOX_API_KEY,
        "mobile": MOBILE,
        "text": "您的验证码是1234。",
        "callback_url": callback_url,
    }
    async with http.post(url + SINGLE_SEND_PATH, data=form) as resp:
        status, body = resp.status, await resp.json()

    assert (status, body["code"]) == (400, 2)
    assert "callback_url" in body["detail"]
    assert sandbox.messages == []
    assert sandbox.pending_reports == []


# -- pull_status ----------------------------------------------------------------------------


async def test_pull_hands_each_report_out_once_oldest_first(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0)
    sids = [(await send(http, url, mobile(n)))["sid"] for n in range(3)]

    assert [r["sid"] for r in await pull(http, url)] == sids
    assert await pull(http, url) == []
    assert sandbox.pending_reports == []
    stats = sandbox.report_stats
    assert (stats.pulls, stats.pulled, stats.pull_sizes) == (2, 3, (3, 0))


async def test_pull_pages_by_page_size(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0)
    sids = [(await send(http, url, mobile(n)))["sid"] for n in range(5)]

    pages = [[r["sid"] for r in await pull(http, url, page_size="2")] for _ in range(4)]

    assert pages == [sids[0:2], sids[2:4], sids[4:5], []]
    assert sandbox.report_stats.pull_sizes == (2, 2, 1, 0)


async def test_pull_takes_20_by_default_and_100_at_most(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0)
    for n in range(125):
        await send(http, url, mobile(n))

    assert len(await pull(http, url)) == 20
    assert len(await pull(http, url, page_size="100")) == 100
    assert len(await pull(http, url, page_size="100")) == 5


async def test_a_report_has_yunpian_fields_and_an_exact_64_bit_sid(sandbox, url, http, clock):
    sandbox.configure_reports(delay_seconds=3.7)
    await send(http, url, uid="order-42")
    await send(http, url, "+8613900139000", uid="")  # +86 goes; an empty uid is none
    await send(http, url, "+14155552671")
    clock.advance(3.7)

    status, content_type, raw = await pull_raw(http, url)

    assert (status, content_type) == (200, "application/json")
    assert re.findall(r'"sid":\s*(\d+)', raw) == [str(FIRST_SID + n) for n in range(3)]
    assert FIRST_SID > 2**53  # a double could not hold these sids
    first, plus86, international = json.loads(raw)
    assert first == {
        "sid": FIRST_SID,
        "uid": "order-42",
        "user_receive_time": "2023-11-15 06:13:23",
        "error_msg": "DELIVRD",
        "mobile": MOBILE,
        "report_status": "SUCCESS",
        "error_detail": "",
    }
    assert (plus86["mobile"], plus86["uid"]) == ("13900139000", None)
    assert international["mobile"] == "+14155552671"
    assert set(international) == REPORT_KEYS


async def test_a_delay_holds_a_report_back_until_its_time(sandbox, url, http, clock):
    await send(http, url)  # the default delay: 0.5 s

    assert await pull(http, url) == []
    clock.advance(0.49)
    assert await pull(http, url) == []
    assert [r.sid for r in sandbox.pending_reports] == [FIRST_SID]
    clock.advance(0.01)
    [report] = await pull(http, url)
    assert report["user_receive_time"] == "2023-11-15 06:13:20"


async def test_reports_are_listed_by_when_they_are_available(sandbox, url, http, clock):
    sandbox.configure_reports(delay_seconds=10)
    await send(http, url, mobile(1))
    sandbox.configure_reports(delay_seconds=0)
    await send(http, url, mobile(2))
    clock.advance(10)

    assert [r["mobile"] for r in await pull(http, url)] == [mobile(2), mobile(1)]


async def test_unread_reports_expire_after_72_hours(sandbox, url, http, clock):
    sandbox.configure_reports(delay_seconds=0)
    await send(http, url)
    clock.advance(72 * 3600)

    assert await pull(http, url) == []
    assert sandbox.report_stats.expired == 1


@pytest.mark.parametrize("page_size", ["0", "101", "-1", "abc", "2.5", " 5", "１０", "1" * 5000])
async def test_pull_refuses_a_page_size_that_is_no_integer_from_1_to_100(
    sandbox, url, http, page_size
):
    sandbox.configure_reports(delay_seconds=0)
    await send(http, url)

    status, _, raw = await pull_raw(http, url, page_size=page_size)

    body = json.loads(raw)
    assert status == 400
    assert set(body) == {"http_status_code", "code", "msg", "detail"}
    assert (body["http_status_code"], body["code"]) == (400, 2)
    assert "page_size" in body["detail"]
    assert len(sandbox.pending_reports) == 1  # nothing handed out


async def test_pull_with_a_wrong_apikey_is_code_minus_1_and_hands_nothing_out(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0)
    await send(http, url)

    status, _, raw = await pull_raw(http, url, apikey="f" * 32)

    assert (status, json.loads(raw)["code"]) == (400, -1)
    assert len(sandbox.pending_reports) == 1
    assert sandbox.report_stats.pulls == 0


async def test_a_fault_on_pull_status_hands_nothing_out(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0)
    await send(http, url)
    sandbox.inject(Fault("http_status", status=502, path=PULL_STATUS_PATH))

    status, _, _ = await pull_raw(http, url)

    assert status == 502
    assert len(await pull(http, url)) == 1


async def test_reports_beyond_the_cap_drop_the_earliest_due(monkeypatch, sandbox, url, http):
    monkeypatch.setattr(delivery_reports, "MAX_PENDING_REPORTS", 3)
    sandbox.configure_reports(delay_seconds=0)
    sids = [(await send(http, url, mobile(n)))["sid"] for n in range(5)]

    assert [r["sid"] for r in await pull(http, url)] == sids[2:]
    assert sandbox.report_stats.dropped == 2


# -- FAIL reports ---------------------------------------------------------------------------


async def test_failure_share_fails_every_nth_report_with_the_codes_in_turn(sandbox, url, http):
    sandbox.configure_reports(
        delay_seconds=0,
        failure_share=0.5,
        failure_codes=[("DB:0103", "用户关机"), ("MK:0001", "空号")],
    )
    for n in range(6):
        await send(http, url, mobile(n))

    reports = await pull(http, url)

    assert [(r["report_status"], r["error_msg"], r["error_detail"]) for r in reports] == [
        ("SUCCESS", "DELIVRD", ""),
        ("FAIL", "DB:0103", "用户关机"),
        ("SUCCESS", "DELIVRD", ""),
        ("FAIL", "MK:0001", "空号"),
        ("SUCCESS", "DELIVRD", ""),
        ("FAIL", "DB:0103", "用户关机"),
    ]


@pytest.mark.parametrize(
    ("share", "failing"),
    [(0.0, []), (1.0, [1, 2, 3, 4, 5, 6]), (1 / 3, [3, 6]), (0.25, [4]), (0.3, [4])],
)
async def test_failure_share_fails_exactly_that_share_spread_evenly(
    sandbox, url, http, share, failing
):
    sandbox.configure_reports(delay_seconds=0, failure_share=share)
    for n in range(1, 7):
        await send(http, url, mobile(n))

    reports = await pull(http, url)

    assert [n for n, r in enumerate(reports, 1) if r["report_status"] == "FAIL"] == failing


async def test_fail_mobiles_always_fail_and_the_rule_counts_afresh_on_new_settings(
    sandbox, url, http
):
    sandbox.configure_reports(delay_seconds=0, failure_share=0.5)
    await send(http, url, mobile(1))  # 1st under these settings: SUCCESS
    sandbox.configure_reports(
        delay_seconds=0, failure_share=0.5, fail_mobiles=[mobile(9)], success_code="0"
    )
    await send(http, url, mobile(2))  # 1st again: SUCCESS
    await send(http, url, mobile(9))  # listed (and 2nd): FAIL
    await send(http, url, mobile(3))  # 3rd: SUCCESS

    reports = await pull(http, url)

    assert [(r["mobile"], r["report_status"], r["error_msg"]) for r in reports] == [
        (mobile(1), "SUCCESS", "DELIVRD"),
        (mobile(2), "SUCCESS", "0"),
        (mobile(9), "FAIL", "UNDELIV"),
        (mobile(3), "SUCCESS", "0"),
    ]


# -- the control API ------------------------------------------------------------------------


async def test_reports_endpoint_sets_settings_and_lists_pending_reports_and_stats(
    sandbox, url, http, clock
):
    settings = {
        "delay_seconds": 2,
        "failure_share": 1,
        "failure_codes": [{"error_msg": "REJECTD", "error_detail": "运营商拒绝"}],
        "retry_interval_seconds": 0.5,
    }
    status, body = await control(http, "POST", url, "/sandbox/reports", settings)
    assert status == 200
    assert body["settings"] == {
        "delay_seconds": 2.0,
        "failure_share": 1.0,
        "fail_mobiles": [],
        "success_code": "DELIVRD",
        "failure_codes": [{"error_msg": "REJECTD", "error_detail": "运营商拒绝"}],
        "retry_interval_seconds": 0.5,
        "push_timeout_seconds": 5.0,
    }
    await send(http, url, uid="u1")

    status, listed = await control(http, "GET", url, "/sandbox/reports")

    assert status == 200
    assert listed["settings"] == body["settings"]
    assert listed["pending"] == [
        {
            "sid": str(FIRST_SID),
            "uid": "u1",
            "user_receive_time": "2023-11-15 06:13:22",
            "error_msg": "REJECTD",
            "mobile": MOBILE,
            "report_status": "FAIL",
            "error_detail": "运营商拒绝",
            "available_at": START_TIME + 2,
            "callback_url": None,
        }
    ]
    assert listed["stats"]["pulls"] == 0
    clock.advance(2)
    await pull(http, url)
    _, listed = await control(http, "GET", url, "/sandbox/reports")
    assert listed["pending"] == []
    assert (listed["stats"]["pulled"], listed["stats"]["pull_sizes"]) == (1, [1])


async def test_reports_endpoint_takes_defaults_for_keys_left_out(sandbox, url, http):
    await control(http, "POST", url, "/sandbox/reports", {"delay_seconds": 9})

    status, body = await control(http, "POST", url, "/sandbox/reports", {"failure_share": 0.1})

    assert status == 200
    assert body["settings"] == {**ReportSettings().to_json(), "failure_share": 0.1}
    assert sandbox.report_settings == ReportSettings(failure_share=0.1)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([], "JSON object"),
        ({"delay": 1}, "unknown key"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": "1"}, "delay_seconds"),
        ({"failure_share": 1.5}, "failure_share"),
        ({"failure_share": True}, "failure_share"),
        ({"fail_mobiles": MOBILE}, "fail_mobiles"),
        ({"fail_mobiles": [""]}, "fail_mobiles"),
        ({"success_code": 0}, "success_code"),
        ({"failure_codes": []}, "failure_codes"),
        ({"failure_codes": [{"error_detail": "x"}]}, "error_msg"),
        ({"failure_codes": [{"error_msg": 1}]}, "error_msg"),
        ({"failure_codes": [["UNDELIV", "x"]]}, "failure code"),
        ({"retry_interval_seconds": 601}, "retry_interval_seconds"),
        ({"push_timeout_seconds": 0}, "push_timeout_seconds"),
    ],
)
async def test_reports_endpoint_refuses_bad_settings_naming_the_problem(
    sandbox, url, http, body, complaint
):
    status, answer = await control(http, "POST", url, "/sandbox/reports", body)

    assert status == 400
    assert complaint in answer["error"]
    assert sandbox.report_settings == ReportSettings()


def test_report_settings_validate_in_python_too(sandbox):
    with pytest.raises(SandboxInputError, match="failure_share"):
        sandbox.configure_reports(failure_share=2)
    with pytest.raises(SandboxInputError, match="failure_codes"):
        ReportSettings(failure_codes=[("UNDELIV",)])
    assert sandbox.configure_reports(ReportSettings(delay_seconds=1), failure_share=0.5) == (
        ReportSettings(delay_seconds=1, failure_share=0.5)
    )


async def test_reset_forgets_reports_and_their_stats_and_restores_the_settings(
    clock, http, receiver
):
    initial = ReportSettings(delay_seconds=0, success_code="OK")
    sandbox = Sandbox(
        templates=make_templates(), enforce_limits=False, clock=clock, report_settings=initial
    )
    async with await start_sandbox(sandbox) as served:
        await send(http, served.url, mobile(1))
        await pull(http, served.url)
        sandbox.configure_reports(delay_seconds=60)
        await send(http, served.url, mobile(2))
        await send(http, served.url, mobile(3), callback_url=receiver.url)
        _, stats = await control(http, "GET", served.url, "/sandbox/stats")
        assert stats["pending_reports"] == 2

        assert (await control(http, "POST", served.url, "/sandbox/reset"))[0] == 200

        assert sandbox.pending_reports == []
        assert sandbox.report_stats.pulls == 0
        assert sandbox.report_settings == initial
        clock.advance(60)
        await asyncio.sleep(0.2)  # the push task looks again: nothing is left to push
        assert receiver.pushes == []


# -- push -----------------------------------------------------------------------------------


async def test_a_report_is_pushed_as_a_form_encoded_json_array_not_pulled(
    sandbox, url, http, receiver
):
    sandbox.configure_reports(delay_seconds=0, fail_mobiles=["+14155552671"])
    await send(http, url, uid="订单 42&x=1", callback_url=receiver.url)
    await send(http, url, "+14155552671", callback_url=receiver.url)

    await wait_until(lambda: len(receiver.reports) == 2, "two pushed reports")

    push = receiver.pushes[0]
    assert push.content_type == "application/x-www-form-urlencoded;charset=utf-8"
    assert push.accept == "application/json;charset=utf-8"
    assert push.body.startswith(b"sms_status=%5B%7B")  # '[{', URL-encoded
    raw_json = unquote_plus(push.body.decode("ascii").removeprefix("sms_status="))
    assert re.search(rf'"sid":\s*{FIRST_SID}\b', raw_json)  # an exact JSON integer
    assert receiver.reports == [
        {
            "sid": FIRST_SID,
            "uid": "订单 42&x=1",
            "user_receive_time": "2023-11-15 06:13:20",
            "error_msg": "DELIVRD",
            "mobile": MOBILE,
            "report_status": "SUCCESS",
            "error_detail": "",
        },
        {
            "sid": FIRST_SID + 1,
            "uid": None,
            "user_receive_time": "2023-11-15 06:13:20",
            "error_msg": "UNDELIV",
            "mobile": "+14155552671",
            "report_status": "FAIL",
            "error_detail": "用户关机",
        },
    ]
    assert await pull(http, url) == []
    await wait_until(lambda: sandbox.report_stats.push_successes == len(receiver.pushes), "stats")
    stats = sandbox.report_stats
    assert (stats.push_attempts, stats.push_failures, stats.pushed) == (len(receiver.pushes), 0, 2)
    assert sandbox.pending_reports == []


async def test_due_reports_are_pushed_in_batches_of_100_per_callback_url(
    sandbox, url, http, clock, receiver
):
    other = receiver.url.replace("t0ps3cret", "other")
    sandbox.configure_reports(delay_seconds=1)
    for n in range(150):
        await send(http, url, mobile(n), callback_url=receiver.url)
    for n in range(3):
        await send(http, url, mobile(n), callback_url=other)
    await asyncio.sleep(0.2)
    assert receiver.pushes == []  # not due yet

    clock.advance(1)
    await wait_until(lambda: len(receiver.reports) == 153, "153 pushed reports")

    batches = sorted(([r["sid"] for r in push.reports] for push in receiver.pushes), key=len)
    assert [len(sids) for sids in batches] == [3, 50, 100]
    small, rest, full = batches
    assert small == [FIRST_SID + 150 + n for n in range(3)]
    assert full + rest == [FIRST_SID + n for n in range(150)]  # oldest first


@pytest.mark.parametrize(
    "answer",
    [
        answer_with("FAIL"),
        answer_with(""),
        answer_with("SUCCESS", status=500),
        answer_with("SUCCESS", status=302),
        answer_with("SUCCESSFUL"),
    ],
)
async def test_a_failed_push_is_retried_3_times_then_given_up(sandbox, url, http, receiver, answer):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=0)
    receiver.answers = [answer] * 10
    await send(http, url, callback_url=receiver.url)

    await wait_until(lambda: sandbox.report_stats.push_given_up == 1, "the push given up")

    stats = sandbox.report_stats
    assert (stats.push_attempts, stats.push_failures, stats.push_successes) == (4, 4, 0)
    assert stats.given_up_reports == 1
    assert len(receiver.pushes) == 4
    assert len({push.body for push in receiver.pushes}) == 1  # the same reports each time
    assert sandbox.pending_reports == []
    await asyncio.sleep(0.2)
    assert len(receiver.pushes) == 4  # no fifth attempt


@pytest.mark.parametrize("acknowledgement", ["SUCCESS", "0", "SUCCESS\n"])
async def test_success_or_0_acknowledges_a_push(sandbox, url, http, receiver, acknowledgement):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=0)
    receiver.answers = [answer_with(acknowledgement)]
    await send(http, url, callback_url=receiver.url)

    await wait_until(lambda: sandbox.report_stats.push_successes == 1, "the push acknowledged")

    await asyncio.sleep(0.1)
    assert len(receiver.pushes) == 1


async def test_retries_wait_the_retry_interval_and_a_late_success_ends_them(
    sandbox, url, http, clock, receiver
):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=300)
    receiver.answers = [answer_with("busy", status=503), answer_with("busy", status=503)]
    await send(http, url, callback_url=receiver.url)
    await wait_until(lambda: sandbox.report_stats.push_failures == 1, "the first failure")

    await asyncio.sleep(0.2)
    assert len(receiver.pushes) == 1  # the clock has not moved
    assert [r.sid for r in sandbox.pending_reports] == [FIRST_SID]
    clock.advance(299)
    await asyncio.sleep(0.2)
    assert len(receiver.pushes) == 1
    clock.advance(1)
    await wait_until(lambda: sandbox.report_stats.push_failures == 2, "the first retry")
    clock.advance(300)
    await wait_until(lambda: sandbox.report_stats.push_successes == 1, "the second retry")

    assert len(receiver.pushes) == 3
    assert sandbox.pending_reports == []
    assert sandbox.report_stats.push_given_up == 0


async def test_no_answer_in_time_is_a_failure(sandbox, url, http, receiver):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=0, push_timeout_seconds=0.2)
    receiver.answers = [hang]
    await send(http, url, callback_url=receiver.url)

    await wait_until(lambda: sandbox.report_stats.push_successes == 1, "the retry")

    assert sandbox.report_stats.push_failures == 1
    assert len(receiver.pushes) == 2  # the report came twice: duplicates happen


async def test_a_callback_url_nobody_listens_on_fails_and_is_given_up(sandbox, url, http):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=0)
    with socket.socket() as bound:  # a port of ours that does not listen: connections refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        await send(http, url, callback_url=f"http://127.0.0.1:{port}/nobody")

        await wait_until(lambda: sandbox.report_stats.push_given_up == 1, "the push given up")

    assert sandbox.report_stats.push_attempts == 4


async def test_the_logs_never_show_a_callback_urls_query(sandbox, url, http, receiver, caplog):
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=0)
    receiver.answers = [answer_with("no")]
    with caplog.at_level("INFO", logger="yunpian_sms_server.sandbox"):
        await send(http, url, callback_url=receiver.url)
        await wait_until(lambda: sandbox.report_stats.push_successes == 1, "the retry")

    assert "/callback" in caplog.text
    assert "t0ps3cret" not in caplog.text


# -- closing --------------------------------------------------------------------------------


def push_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "ReportPusher" in t.get_coro().__qualname__]


async def test_closing_stops_the_push_task_and_pushes_in_flight(clock, http, receiver):
    sandbox = Sandbox(templates=make_templates(), enforce_limits=False, clock=clock)
    served = await start_sandbox(sandbox)
    sandbox.configure_reports(delay_seconds=0, retry_interval_seconds=300)
    receiver.answers = [answer_with("no"), hang]
    await send(http, served.url, mobile(1), callback_url=receiver.url)
    await wait_until(lambda: sandbox.report_stats.push_failures == 1, "a failure to retry")
    await send(http, served.url, mobile(2), callback_url=receiver.url)
    await wait_until(lambda: len(receiver.pushes) == 2, "a push in flight")
    assert len(push_tasks()) == 2  # the task and the push in flight
    loop = asyncio.get_running_loop()
    started = loop.time()

    await served.close()

    assert loop.time() - started < 2
    assert push_tasks() == []
    # Both reports stay pending: one waits for its retry, the other's push never finished.
    assert [r.mobile for r in sandbox.pending_reports] == [mobile(1), mobile(2)]
    assert all(isinstance(r, DeliveryReport) for r in sandbox.pending_reports)

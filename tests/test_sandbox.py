"""Tests of the YunPian sandbox over real loopback sockets, with an injected clock for limits."""

from __future__ import annotations

import ast
import asyncio
import errno
import importlib.util
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import FakeClock

from yunpian_sms_server import sandbox as sandbox_package
from yunpian_sms_server.sandbox import (
    DEFAULT_SIGNATURE,
    FIRST_SID,
    SANDBOX_API_KEY,
    SINGLE_SEND_PATH,
    TPL_GET_PATH,
    USER_GET_PATH,
    Fault,
    RunningSandbox,
    Sandbox,
    SandboxInputError,
    SandboxTemplate,
    account,
    per_number_limits,
    start_sandbox,
)
from yunpian_sms_server.sandbox.template_matching import MAX_VARIABLES

DOMESTIC_BODY = "您的验证码是#code#。如非本人操作，请忽略本短信"
DOMESTIC_ID = 1001
PENDING_ID = 1002
REJECTED_ID = 1003
US_SG_ID = 2001
ALL_REGIONS_ID = 2002
MOBILE = "13800138000"
OTHER_MOBILE = "13900139000"
US_MOBILE = "+14155552671"
SG_MOBILE = "+6581234567"
GB_MOBILE = "+447911123456"
START_TIME = 1_700_000_000.0


def domestic_text(code: str = "1234") -> str:
    return DOMESTIC_BODY.replace("#code#", code)


def make_templates() -> list[SandboxTemplate]:
    return [
        SandboxTemplate(DOMESTIC_ID, DEFAULT_SIGNATURE + DOMESTIC_BODY),
        SandboxTemplate(
            PENDING_ID, DEFAULT_SIGNATURE + "您正在重置密码，验证码#code#。", "CHECKING"
        ),
        SandboxTemplate(
            REJECTED_ID, DEFAULT_SIGNATURE + "您正在注册，验证码#code#。", "FAIL", "内容不规范"
        ),
        SandboxTemplate(
            US_SG_ID,
            "【Sandbox】Your verification code is #code#.",
            country_code="US,SG",
            lang="en",
        ),
        SandboxTemplate(ALL_REGIONS_ID, "Your login code: #code#", country_code="ALL", lang="en"),
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START_TIME)


@pytest.fixture
def sandbox(clock: FakeClock) -> Sandbox:
    return Sandbox(templates=make_templates(), clock=clock)


@pytest.fixture
async def running(sandbox: Sandbox) -> AsyncIterator[RunningSandbox]:
    served = await start_sandbox(sandbox, port=0)
    try:
        yield served
    finally:
        await served.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
def url(running: RunningSandbox) -> str:
    return running.url


async def post_form(
    http: aiohttp.ClientSession, url: str, path: str, form: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url + path, data=form) as resp:
        return resp.status, json.loads(await resp.text())


async def send(
    http: aiohttp.ClientSession,
    url: str,
    mobile: str = MOBILE,
    text: str | None = None,
    *,
    apikey: str = SANDBOX_API_KEY,
) -> tuple[int, Any]:
    form = {"apikey": apikey, "mobile": mobile, "text": domestic_text() if text is None else text}
    return await post_form(http, url, SINGLE_SEND_PATH, form)


async def control(
    http: aiohttp.ClientSession, method: str, url: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with http.request(method, url + path, json=body) as resp:
        return resp.status, json.loads(await resp.text())


def assert_yunpian_error(status: int, body: Any, code: int) -> None:
    assert status == 400
    assert set(body) == {"http_status_code", "code", "msg", "detail"}
    assert body["http_status_code"] == 400
    assert body["code"] == code


# -- single_send: success -------------------------------------------------------------------


async def test_single_send_accepts_matching_text_and_records_message(sandbox, url, http):
    status, body = await send(http, url, text=domestic_text("A1b2C3"))

    assert status == 200
    assert body == {
        "code": 0,
        "msg": "发送成功",
        "count": 1,
        "fee": 0.05,
        "unit": "RMB",
        "mobile": MOBILE,
        "sid": FIRST_SID,
    }
    [message] = sandbox.messages
    assert message.sid == FIRST_SID
    assert message.mobile == MOBILE
    assert message.text == DEFAULT_SIGNATURE + domestic_text("A1b2C3")
    assert message.code == "A1b2C3"
    assert message.tpl_id == DOMESTIC_ID
    assert message.at == START_TIME


async def test_single_send_sids_exceed_2_53_and_arrive_exactly(sandbox, url, http, clock):
    raw_sids = []
    for mobile in (MOBILE, OTHER_MOBILE):
        async with http.post(
            url + SINGLE_SEND_PATH,
            data={"apikey": SANDBOX_API_KEY, "mobile": mobile, "text": domestic_text()},
        ) as resp:
            raw = await resp.text()
        found = re.search(r'"sid":\s*(\d+)', raw)
        assert found is not None
        raw_sids.append(int(found.group(1)))

    assert raw_sids[0] > 2**53
    assert raw_sids[1] == raw_sids[0] + 1
    assert raw_sids == [message.sid for message in sandbox.messages]
    status, listed = await control(http, "GET", url, "/sandbox/messages")
    assert status == 200
    assert [m["sid"] for m in listed["messages"]] == [str(sid) for sid in raw_sids]


async def test_single_send_accepts_text_that_carries_the_template_signature(sandbox, url, http):
    status, body = await send(http, url, text=DEFAULT_SIGNATURE + domestic_text("9876"))

    assert (status, body["code"]) == (200, 0)
    assert sandbox.messages[0].text == DEFAULT_SIGNATURE + domestic_text("9876")
    assert sandbox.messages[0].code == "9876"


async def test_single_send_refuses_text_with_another_signature(sandbox, url, http):
    status, body = await send(http, url, text="【别家】" + domestic_text())

    assert_yunpian_error(status, body, 5)


@pytest.mark.parametrize(
    ("filler", "count", "raw_fee"),
    [(60, 1, "0.05"), (61, 2, "0.1"), (124, 2, "0.1"), (125, 3, "0.15")],
)
async def test_single_send_bills_70_chars_as_one_segment_and_67_per_segment_beyond(
    sandbox, url, http, filler, count, raw_fee
):
    # Delivered length = 6 (signature) + filler + 4 (code).
    sandbox.add_template(SandboxTemplate(3000, DEFAULT_SIGNATURE + "长" * filler + "#code#"))
    async with http.post(
        url + SINGLE_SEND_PATH,
        data={"apikey": SANDBOX_API_KEY, "mobile": MOBILE, "text": "长" * filler + "1234"},
    ) as resp:
        raw = await resp.text()

    assert json.loads(raw)["count"] == count
    assert f'"fee": {raw_fee},' in raw
    assert len(sandbox.messages[0].text) == 6 + filler + 4


@pytest.mark.parametrize("code", ["1", "abcdEFGH12345678"])
async def test_single_send_accepts_codes_of_1_to_16_letters_and_digits(sandbox, url, http, code):
    status, body = await send(http, url, text=domestic_text(code))

    assert (status, body["code"]) == (200, 0)
    assert sandbox.last_code(MOBILE) == code


# -- single_send: refusals ------------------------------------------------------------------


@pytest.mark.parametrize("apikey", ["f" * 32, SANDBOX_API_KEY.upper(), ""])
async def test_single_send_refuses_a_wrong_or_missing_apikey(sandbox, url, http, apikey):
    status, body = await send(http, url, apikey=apikey)

    assert_yunpian_error(status, body, -1)
    assert body["msg"] == "非法的apikey"
    assert sandbox.messages == []


async def test_sandbox_accepts_its_configured_apikey_only(clock, http):
    custom = Sandbox("a" * 32, make_templates(), clock=clock)
    async with await start_sandbox(custom) as served:
        assert (await send(http, served.url, apikey="a" * 32))[1]["code"] == 0
        assert (await send(http, served.url, OTHER_MOBILE))[1]["code"] == -1


@pytest.mark.parametrize("missing", ["mobile", "text"])
async def test_single_send_refuses_missing_parameters_with_code_1(url, http, missing):
    form = {"apikey": SANDBOX_API_KEY, "mobile": MOBILE, "text": domestic_text()}
    del form[missing]

    status, body = await post_form(http, url, SINGLE_SEND_PATH, form)

    assert_yunpian_error(status, body, 1)
    assert missing in body["detail"]


@pytest.mark.parametrize(
    "mobile",
    [
        "1380013800",  # 10 digits
        "138001380001",  # 12 digits
        "12800138000",  # 1[3-9] required
        "8613800138000",  # prefix without +
        " 14155552671",  # a + that arrived as a space (not percent-encoded)
        "+1 4155552671",
        "+1415555267",  # too short for the US
        "+10005552671",  # impossible area code
        "1380013800a",
        "13800138000,13900139000",
        "１３８００１３８０００",  # full-width digits
    ],
)
async def test_single_send_refuses_malformed_mobile_with_code_2_naming_mobile(
    sandbox, url, http, mobile
):
    status, body = await send(http, url, mobile)

    assert_yunpian_error(status, body, 2)
    assert body["msg"] == "请求参数格式错误"
    assert body["detail"] == f"参数 mobile 格式不正确，mobile:{mobile}"
    assert sandbox.messages == []


@pytest.mark.parametrize(
    "text",
    [
        "您的验证码是1234",  # punctuation and tail missing
        domestic_text("12-34"),
        domestic_text("12345678901234567"),  # 17 characters
        domestic_text(""),
        domestic_text("１２３４"),  # full-width digits
        "您正在重置密码，验证码1234。",  # template still CHECKING
        "您正在注册，验证码1234。",  # template rejected
    ],
)
async def test_single_send_refuses_text_without_an_approved_template_with_code_5(
    sandbox, url, http, text
):
    status, body = await send(http, url, text=text)

    assert_yunpian_error(status, body, 5)
    assert body["msg"] == "未找到匹配的模板"
    assert body["detail"] == "未自动匹配到合适的模板"
    assert sandbox.messages == []


async def test_single_send_matches_a_template_once_it_is_approved(sandbox, url, http):
    text = "您正在重置密码，验证码1234。"
    assert (await send(http, url, text=text))[1]["code"] == 5

    sandbox.set_template_status(PENDING_ID, "SUCCESS")

    assert (await send(http, url, text=text))[1]["code"] == 0
    assert sandbox.messages[0].tpl_id == PENDING_ID


async def test_repeated_variable_must_hold_the_same_value(sandbox, url, http):
    sandbox.add_template(SandboxTemplate(3001, DEFAULT_SIGNATURE + "码#code#，再说一次#code#"))

    assert (await send(http, url, text="码12，再说一次34"))[1]["code"] == 5
    assert (await send(http, url, text="码12，再说一次12"))[1]["code"] == 0


# -- international --------------------------------------------------------------------------


@pytest.mark.parametrize("mobile", [US_MOBILE, SG_MOBILE])
async def test_single_send_delivers_international_text_to_listed_regions(
    sandbox, url, http, mobile
):
    status, body = await send(http, url, mobile, "Your verification code is X9y8.")

    assert (status, body["code"], body["mobile"]) == (200, 0, mobile)
    assert sandbox.messages[0].tpl_id == US_SG_ID
    assert sandbox.messages[0].text == "【Sandbox】Your verification code is X9y8."


async def test_single_send_refuses_region_outside_template_list_with_code_23(sandbox, url, http):
    status, body = await send(http, url, GB_MOBILE, "Your verification code is X9y8.")

    assert_yunpian_error(status, body, 23)
    assert sandbox.messages == []


async def test_all_regions_template_accepts_any_region(sandbox, url, http):
    status, body = await send(http, url, GB_MOBILE, "Your login code: 5555")

    assert (status, body["code"]) == (200, 0)
    assert sandbox.messages[0].tpl_id == ALL_REGIONS_ID


async def test_domestic_and_international_templates_do_not_mix(sandbox, url, http):
    # A mainland number with an international text, an international one with a domestic text.
    assert (await send(http, url, MOBILE, "Your login code: 5555"))[1]["code"] == 5
    assert (await send(http, url, US_MOBILE, domestic_text()))[1]["code"] == 5
    # +86 is international for YunPian: it needs an international template.
    assert (await send(http, url, "+8613800138000", domestic_text()))[1]["code"] == 5
    status, body = await send(http, url, "+8613800138000", "Your login code: 5555")
    assert (status, body["mobile"]) == (200, "+8613800138000")
    assert [m.mobile for m in sandbox.messages] == ["+8613800138000"]


# -- per-number limits ----------------------------------------------------------------------


async def test_same_content_within_30_seconds_is_refused_with_code_8(sandbox, url, http, clock):
    assert (await send(http, url))[1]["code"] == 0
    clock.advance(29)

    status, body = await send(http, url)

    assert_yunpian_error(status, body, 8)
    assert len(sandbox.messages) == 1


async def test_same_content_a_fourth_time_in_5_minutes_is_refused_with_code_9(url, http, clock):
    for _ in range(3):
        assert (await send(http, url))[1]["code"] == 0
        clock.advance(31)

    status, body = await send(http, url)
    assert_yunpian_error(status, body, 9)
    # 9 is checked before 22: with other content, the hourly rule is what refuses it.
    assert (await send(http, url, text=domestic_text("5678")))[1]["code"] == 22
    clock.advance(300 - 3 * 31 + 1)
    assert (await send(http, url))[1]["code"] == 22


async def test_second_message_within_30_seconds_is_refused_with_code_33(sandbox, url, http, clock):
    assert (await send(http, url, text=domestic_text("1111")))[1]["code"] == 0
    clock.advance(29.9)

    status, body = await send(http, url, text=domestic_text("2222"))

    assert_yunpian_error(status, body, 33)
    assert body["msg"] is None
    assert body["detail"] == (
        f"号码：{MOBILE}, 超过频率，同一个手机号同一验证码模板每30秒只能发送一条"
    )
    # The refusal did not count: 30 s after the accepted one, a send goes through.
    clock.advance(0.1)
    assert (await send(http, url, text=domestic_text("3333")))[1]["code"] == 0
    # Another number was never limited.
    assert (await send(http, url, OTHER_MOBILE))[1]["code"] == 0


async def test_fourth_message_within_an_hour_is_refused_with_code_22(url, http, clock):
    for code in ("1111", "2222", "3333"):
        assert (await send(http, url, text=domestic_text(code)))[1]["code"] == 0
        clock.advance(31)

    status, body = await send(http, url, text=domestic_text("4444"))
    assert_yunpian_error(status, body, 22)
    assert body["msg"] == "1小时内同一手机号发送次数超过限制"

    clock.advance(3600 - 3 * 31)
    assert (await send(http, url, text=domestic_text("5555")))[1]["code"] == 0


async def test_eleventh_message_within_24_hours_is_refused_with_code_17(url, http, clock):
    for index in range(10):
        assert (await send(http, url, text=domestic_text(f"{index:04d}")))[1]["code"] == 0
        clock.advance(21 * 60)  # stays under 3 per hour

    status, body = await send(http, url, text=domestic_text("9999"))
    assert_yunpian_error(status, body, 17)

    clock.advance(86400 - 10 * 21 * 60)
    assert (await send(http, url, text=domestic_text("9999")))[1]["code"] == 0


async def test_limits_can_be_turned_off(clock, http):
    unlimited = Sandbox(templates=make_templates(), enforce_limits=False, clock=clock)
    async with await start_sandbox(unlimited) as served:
        for _ in range(12):
            assert (await send(http, served.url))[1]["code"] == 0
    assert len(unlimited.messages) == 12


async def test_limits_endpoint_switches_limits_off_and_on(url, http):
    assert await control(http, "POST", url, "/sandbox/limits", {"enforce": False}) == (
        200,
        {"enforce": False},
    )
    for _ in range(4):
        assert (await send(http, url))[1]["code"] == 0

    assert (await control(http, "POST", url, "/sandbox/limits", {"enforce": True}))[0] == 200
    assert await control(http, "GET", url, "/sandbox/limits") == (200, {"enforce": True})
    assert (await send(http, url, text=domestic_text("0000")))[1]["code"] == 0
    assert (await send(http, url, text=domestic_text("0001")))[1]["code"] == 33


@pytest.mark.parametrize("body", [{"enforce": "no"}, {}, {"enforce": False, "x": 1}, [False]])
async def test_limits_endpoint_refuses_bad_bodies(url, http, body):
    status, answer = await control(http, "POST", url, "/sandbox/limits", body)

    assert status == 400
    assert answer["error"]


async def test_concurrent_sends_to_one_number_accept_exactly_one(sandbox, url, http):
    results = await asyncio.gather(
        *(send(http, url, text=domestic_text(f"{i:04d}")) for i in range(20))
    )

    codes = sorted(body["code"] for _, body in results)
    assert codes == [0] + [33] * 19
    assert len(sandbox.messages) == 1


async def test_limit_history_forgets_least_recent_numbers_beyond_the_cap(
    monkeypatch, url, http, clock
):
    monkeypatch.setattr(per_number_limits, "MAX_TRACKED_KEYS", 2)
    for mobile in (MOBILE, OTHER_MOBILE, "13700137000"):
        assert (await send(http, url, mobile))[1]["code"] == 0

    # MOBILE's history was evicted; OTHER_MOBILE's is still there.
    assert (await send(http, url, MOBILE, domestic_text("2222")))[1]["code"] == 0
    assert (await send(http, url, "13700137000", domestic_text("2222")))[1]["code"] == 33


async def test_recorded_messages_are_capped(monkeypatch, clock, http):
    monkeypatch.setattr(account, "MAX_RECORDED_MESSAGES", 3)
    unlimited = Sandbox(templates=make_templates(), enforce_limits=False, clock=clock)
    async with await start_sandbox(unlimited) as served:
        for index in range(5):
            await send(http, served.url, text=domestic_text(str(index)))

    assert [message.code for message in unlimited.messages] == ["2", "3", "4"]


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "msg"),
    [(22, "1小时内同一手机号发送次数超过限制"), (-51, "系统繁忙"), (3, "账户余额不足")],
)
async def test_error_fault_answers_that_code_and_records_nothing(sandbox, url, http, code, msg):
    sandbox.inject(Fault("error", code=code))

    status, body = await send(http, url)

    assert_yunpian_error(status, body, code)
    assert body["msg"] == msg
    assert sandbox.messages == []
    assert (await send(http, url))[1]["code"] == 0


async def test_error_fault_33_names_the_number_in_detail(sandbox, url, http):
    sandbox.inject(Fault("error", code=33))

    status, body = await send(http, url)

    assert_yunpian_error(status, body, 33)
    assert body["msg"] is None
    assert MOBILE in body["detail"]


async def test_error_fault_2_names_the_mobile_like_a_real_format_error(sandbox, url, http):
    sandbox.inject(Fault("error", code=2))

    status, body = await send(http, url)

    assert_yunpian_error(status, body, 2)
    assert body["detail"] == f"参数 mobile 格式不正确，mobile:{MOBILE}"


async def test_delay_fault_delays_then_handles_the_request(sandbox, url, http):
    sandbox.inject(Fault("delay", seconds=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()

    status, body = await send(http, url)

    assert loop.time() - started >= 0.2
    assert (status, body["code"]) == (200, 0)
    assert len(sandbox.messages) == 1


async def test_delay_fault_still_records_a_message_the_caller_gave_up_on(sandbox, url, http):
    sandbox.inject(Fault("delay", seconds=0.3))

    with pytest.raises(TimeoutError):
        async with http.post(
            url + SINGLE_SEND_PATH,
            data={"apikey": SANDBOX_API_KEY, "mobile": MOBILE, "text": domestic_text()},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as resp:
            await resp.read()

    for _ in range(100):
        if sandbox.messages:
            break
        await asyncio.sleep(0.01)
    assert [message.mobile for message in sandbox.messages] == [MOBILE]


async def test_http_status_fault_answers_an_html_page(sandbox, url, http):
    sandbox.inject(Fault("http_status", status=502))

    async with http.post(
        url + SINGLE_SEND_PATH,
        data={"apikey": SANDBOX_API_KEY, "mobile": MOBILE, "text": domestic_text()},
    ) as resp:
        raw = await resp.text()
        assert resp.status == 502
        assert resp.content_type == "text/html"

    assert "<title>502 Bad Gateway</title>" in raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert sandbox.messages == []


async def test_malformed_fault_not_json_answers_200_with_a_body_that_does_not_parse(
    sandbox, url, http
):
    sandbox.inject(Fault("malformed", body="not_json"))

    async with http.post(
        url + SINGLE_SEND_PATH,
        data={"apikey": SANDBOX_API_KEY, "mobile": MOBILE, "text": domestic_text()},
    ) as resp:
        raw = await resp.text()
        assert resp.status == 200

    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert sandbox.messages == []


async def test_malformed_fault_wrong_shape_answers_json_without_the_documented_fields(
    sandbox, url, http
):
    sandbox.inject(Fault("malformed", body="wrong_shape"))

    assert await send(http, url) == (200, {"result": "ok"})
    assert sandbox.messages == []


async def test_drop_fault_closes_the_connection_and_the_next_request_works(
    sandbox, url, http, caplog
):
    sandbox.inject(Fault("drop"))

    with caplog.at_level(logging.DEBUG), pytest.raises(aiohttp.ClientConnectionError) as raised:
        await send(http, url)

    assert isinstance(raised.value, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
    assert sandbox.messages == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert all(record.exc_info is None for record in caplog.records)
    assert (await send(http, url))[1]["code"] == 0


async def test_fault_times_applies_to_that_many_requests(sandbox, url, http, clock):
    sandbox.inject(Fault("error", code=-50, times=2))

    assert (await send(http, url))[1]["code"] == -50
    assert (await send(http, url))[1]["code"] == -50
    assert (await send(http, url))[1]["code"] == 0


async def test_fault_with_mobile_only_hits_that_number(sandbox, url, http):
    sandbox.inject(Fault("error", code=10, mobile=OTHER_MOBILE))

    assert (await send(http, url, MOBILE))[1]["code"] == 0
    assert (await send(http, url, OTHER_MOBILE))[1]["code"] == 10
    assert sandbox.pending_faults == []


async def test_fault_with_path_only_hits_that_api(sandbox, url, http):
    sandbox.inject(Fault("error", code=-2, path=TPL_GET_PATH))

    assert (await send(http, url))[1]["code"] == 0
    status, body = await post_form(http, url, TPL_GET_PATH, {"apikey": SANDBOX_API_KEY})
    assert_yunpian_error(status, body, -2)


async def test_faults_are_consumed_first_in_first_out(sandbox, url, http):
    sandbox.inject(Fault("error", code=-51))
    sandbox.inject(Fault("error", code=-53))

    assert (await send(http, url))[1]["code"] == -51
    assert (await send(http, url))[1]["code"] == -53


async def test_faults_endpoint_queues_lists_and_clears_faults(sandbox, url, http):
    fault = {"kind": "error", "code": 22, "times": 2, "mobile": MOBILE}
    status, body = await control(http, "POST", url, "/sandbox/faults", fault)
    assert status == 200
    assert body["fault"] == {**fault, "path": SINGLE_SEND_PATH}

    assert (await send(http, url))[1]["code"] == 22
    assert await control(http, "GET", url, "/sandbox/faults") == (
        200,
        {"faults": [{**fault, "path": SINGLE_SEND_PATH, "remaining": 1}]},
    )

    assert await control(http, "DELETE", url, "/sandbox/faults") == (200, {"faults": []})
    assert sandbox.pending_faults == []
    assert (await send(http, url))[1]["code"] == 0


async def test_faults_endpoint_accepts_every_kind(sandbox, url, http):
    faults = [
        {"kind": "error", "code": 5},
        {"kind": "delay", "seconds": 2.5},
        {"kind": "http_status", "status": 503, "path": USER_GET_PATH},
        {"kind": "malformed", "body": "wrong_shape"},
        {"kind": "drop", "times": 3},
    ]
    for fault in faults:
        assert (await control(http, "POST", url, "/sandbox/faults", fault))[0] == 200

    assert [(f.kind, remaining) for f, remaining in sandbox.pending_faults] == [
        ("error", 1),
        ("delay", 1),
        ("http_status", 1),
        ("malformed", 1),
        ("drop", 3),
    ]


@pytest.mark.parametrize(
    ("fault", "complaint"),
    [
        ({"kind": "explode"}, "kind"),
        ({"code": 22}, "kind"),
        ({"kind": "error"}, "code"),
        ({"kind": "error", "code": 0}, "code"),
        ({"kind": "error", "code": "22"}, "code"),
        ({"kind": "error", "code": True}, "code"),
        ({"kind": "delay", "seconds": -1}, "seconds"),
        ({"kind": "delay", "seconds": "1"}, "seconds"),
        ({"kind": "http_status", "status": 200}, "status"),
        ({"kind": "malformed", "body": "garbage"}, "body"),
        ({"kind": "drop", "times": 0}, "times"),
        ({"kind": "drop", "path": "/v2/sms/batch_send.json"}, "path"),
        ({"kind": "drop", "mobile": 13800138000}, "mobile"),
        ({"kind": "drop", "code": 5}, "code"),
        ({"kind": "drop", "colour": "red"}, "colour"),
        (["drop"], "object"),
    ],
)
async def test_faults_endpoint_refuses_bad_faults_naming_the_problem(
    sandbox, url, http, fault, complaint
):
    status, body = await control(http, "POST", url, "/sandbox/faults", fault)

    assert status == 400
    assert complaint in body["error"]
    assert sandbox.pending_faults == []


async def test_faults_endpoint_refuses_a_body_that_is_not_json(url, http):
    async with http.post(url + "/sandbox/faults", data="kind=drop") as resp:
        assert resp.status == 400
        assert "JSON" in (await resp.json())["error"]


async def test_control_endpoints_refuse_json_nested_past_the_recursion_limit(url, http):
    nested = "[" * 100_000 + "]" * 100_000
    for path in ("/sandbox/faults", "/sandbox/templates", "/sandbox/limits"):
        async with http.post(url + path, data=nested) as resp:
            assert resp.status == 400
            assert "nested" in (await resp.json())["error"]


def test_fault_constructor_validates_like_the_endpoint():
    with pytest.raises(SandboxInputError, match="seconds"):
        Fault("delay")
    with pytest.raises(SandboxInputError, match="status"):
        Fault("error", code=5, status=500)
    assert Fault("drop").to_json() == {"kind": "drop", "times": 1, "path": SINGLE_SEND_PATH}


# -- tpl/get and user/get -------------------------------------------------------------------


async def test_tpl_get_lists_every_template_with_all_fields(url, http):
    status, body = await post_form(http, url, TPL_GET_PATH, {"apikey": SANDBOX_API_KEY})

    assert status == 200
    assert body == [template.to_json() for template in make_templates()]
    assert body[2] == {
        "tpl_id": REJECTED_ID,
        "tpl_content": DEFAULT_SIGNATURE + "您正在注册，验证码#code#。",
        "check_status": "FAIL",
        "reason": "内容不规范",
        "country_code": None,
        "lang": None,
    }


async def test_tpl_get_with_id_answers_one_object(url, http):
    form = {"apikey": SANDBOX_API_KEY, "tpl_id": str(US_SG_ID)}

    status, body = await post_form(http, url, TPL_GET_PATH, form)

    assert status == 200
    assert body == {
        "tpl_id": US_SG_ID,
        "tpl_content": "【Sandbox】Your verification code is #code#.",
        "check_status": "SUCCESS",
        "reason": None,
        "country_code": "US,SG",
        "lang": "en",
    }


async def test_tpl_get_with_unknown_id_answers_code_5_naming_the_id(url, http):
    form = {"apikey": SANDBOX_API_KEY, "tpl_id": "424242"}

    status, body = await post_form(http, url, TPL_GET_PATH, form)

    assert_yunpian_error(status, body, 5)
    assert "tpl_id" in body["detail"]
    assert "424242" in body["detail"]


async def test_tpl_get_with_an_id_longer_than_64_bits_answers_code_2(url, http):
    # int() refuses strings of over 4,300 digits: such an id once failed with HTTP 500.
    for raw_id in ("9" * 21, "9" * 5000):
        form = {"apikey": SANDBOX_API_KEY, "tpl_id": raw_id}

        status, body = await post_form(http, url, TPL_GET_PATH, form)

        assert_yunpian_error(status, body, 2)


async def test_tpl_get_and_user_get_check_the_apikey(url, http):
    for path in (TPL_GET_PATH, USER_GET_PATH):
        status, body = await post_form(http, url, path, {"apikey": "0" * 32})
        assert_yunpian_error(status, body, -1)


async def test_user_get_answers_the_flat_account_object(url, http):
    status, body = await post_form(http, url, USER_GET_PATH, {"apikey": SANDBOX_API_KEY})

    assert status == 200
    assert body["nick"] == "sandbox"
    assert body["balance"] == 1000.0
    assert body["api_version"] == "v2"
    assert {"gmt_created", "mobile", "email", "ip_whitelist", "alarm_balance"} <= set(body)


async def test_get_on_an_api_path_answers_code_11(url, http):
    async with http.get(url + SINGLE_SEND_PATH) as resp:
        status, body = resp.status, await resp.json()

    assert_yunpian_error(status, body, 11)
    assert body["msg"] == "接口不支持GET方式调用"


async def test_unknown_api_path_answers_404_json(url, http):
    async with http.post(url + "/v2/sms/batch_send.json", data={"apikey": "x"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["http_status_code"] == 404


# -- control endpoints ----------------------------------------------------------------------


async def test_messages_endpoint_lists_filters_and_clears(sandbox, url, http):
    await send(http, url, MOBILE, domestic_text("1111"))
    await send(http, url, OTHER_MOBILE, domestic_text("2222"))

    status, body = await control(http, "GET", url, "/sandbox/messages")
    assert status == 200
    assert [(m["mobile"], m["code"]) for m in body["messages"]] == [
        (MOBILE, "1111"),
        (OTHER_MOBILE, "2222"),
    ]
    assert body["messages"][0] == {
        "sid": str(FIRST_SID),
        "mobile": MOBILE,
        "text": DEFAULT_SIGNATURE + domestic_text("1111"),
        "code": "1111",
        "tpl_id": DOMESTIC_ID,
        "at": START_TIME,
        "uid": None,
        "callback_url": None,
    }

    async with http.get(url + "/sandbox/messages", params={"mobile": US_MOBILE}) as resp:
        assert (await resp.json())["messages"] == []
    async with http.get(url + "/sandbox/messages", params={"mobile": OTHER_MOBILE}) as resp:
        assert [m["code"] for m in (await resp.json())["messages"]] == ["2222"]

    assert (await control(http, "DELETE", url, "/sandbox/messages"))[0] == 200
    assert sandbox.messages == []


async def test_templates_endpoint_adds_replaces_and_lists_templates(sandbox, url, http):
    new = {
        "tpl_id": 5000,
        "tpl_content": DEFAULT_SIGNATURE + "登录码#code#",
        "check_status": "CHECKING",
        "reason": None,
        "country_code": None,
        "lang": "zh_cn",
    }
    assert (await control(http, "POST", url, "/sandbox/templates", new))[0] == 200
    assert (await send(http, url, text="登录码1234"))[1]["code"] == 5

    replaced = {"tpl_id": 5000, "tpl_content": DEFAULT_SIGNATURE + "登录码#code#"}
    status, body = await control(http, "POST", url, "/sandbox/templates", replaced)
    assert (status, body["template"]["check_status"]) == (200, "SUCCESS")
    assert (await send(http, url, text="登录码1234"))[1]["code"] == 0

    status, body = await control(http, "GET", url, "/sandbox/templates")
    assert status == 200
    assert [t["tpl_id"] for t in body["templates"]].count(5000) == 1
    assert len(body["templates"]) == len(make_templates()) + 1


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ({"tpl_content": "x#code#"}, "tpl_id"),
        ({"tpl_id": 0, "tpl_content": "x#code#"}, "tpl_id"),
        ({"tpl_id": "7", "tpl_content": "x#code#"}, "tpl_id"),
        ({"tpl_id": 7, "tpl_content": ""}, "tpl_content"),
        ({"tpl_id": 7, "tpl_content": "x", "check_status": "OK"}, "check_status"),
        ({"tpl_id": 7, "tpl_content": "x", "country_code": "us,sg"}, "country_code"),
        ({"tpl_id": 7, "tpl_content": "x", "content": "x"}, "content"),
        ({"tpl_id": 7, "tpl_content": "#v#" * (MAX_VARIABLES + 1)}, "variables"),
    ],
)
async def test_templates_endpoint_refuses_bad_templates(sandbox, url, http, template, complaint):
    status, body = await control(http, "POST", url, "/sandbox/templates", template)

    assert status == 400
    assert complaint in body["error"]
    assert len(sandbox.templates) == len(make_templates())


async def test_reset_endpoint_clears_state_but_keeps_templates(sandbox, url, http, clock):
    await send(http, url)
    sandbox.inject(Fault("drop"))
    await control(http, "POST", url, "/sandbox/limits", {"enforce": False})

    assert (await control(http, "POST", url, "/sandbox/reset"))[0] == 200

    assert sandbox.messages == []
    assert sandbox.pending_faults == []
    assert sandbox.enforce_limits is True
    assert len(sandbox.templates) == len(make_templates())
    assert sandbox.request_counts == {}
    # The limit history went too: the same content again is accepted at once.
    assert (await send(http, url))[1]["code"] == 0


def test_reset_method_clears_limit_history_and_counts(sandbox):
    sandbox.request_counts[SINGLE_SEND_PATH] += 3
    sandbox.inject(Fault("drop"))

    sandbox.reset()

    assert sandbox.request_counts == {}
    assert sandbox.pending_faults == []


async def test_stats_endpoint_counts_requests_per_api_path(url, http):
    await send(http, url)
    await send(http, url, apikey="wrong")
    await post_form(http, url, USER_GET_PATH, {"apikey": SANDBOX_API_KEY})
    await control(http, "GET", url, "/sandbox/messages")

    status, body = await control(http, "GET", url, "/sandbox/stats")

    assert status == 200
    assert body["requests"] == {SINGLE_SEND_PATH: 2, USER_GET_PATH: 1}
    assert body["messages"] == 1


async def test_healthz_answers_ok(url, http):
    async with http.get(url + "/healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok")


# -- serving and hygiene --------------------------------------------------------------------


async def test_start_sandbox_reports_the_real_port_and_close_is_idempotent(clock, http):
    served = await start_sandbox(Sandbox(clock=clock), port=0)
    port = int(served.url.rsplit(":", 1)[1])
    assert served.url == f"http://127.0.0.1:{port}"
    assert port > 0
    async with http.get(served.url + "/healthz") as resp:
        assert resp.status == 200

    await served.close()
    await served.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(served.url + "/healthz"):
            pass


async def test_the_apikey_never_reaches_the_logs(sandbox, url, http, caplog):
    with caplog.at_level(logging.DEBUG):
        await send(http, url)
        await send(http, url, apikey="f" * 32)
        async with http.get(
            url + SINGLE_SEND_PATH, params={"apikey": SANDBOX_API_KEY, "mobile": MOBILE}
        ) as resp:
            await resp.read()

    assert caplog.records  # the access log did run
    assert SANDBOX_API_KEY not in caplog.text
    assert "f" * 32 not in caplog.text
    assert SANDBOX_API_KEY not in repr(sandbox)


async def test_close_does_not_wait_for_a_long_delay_fault(clock, http):
    delayed = Sandbox(templates=make_templates(), clock=clock)
    served = await start_sandbox(delayed)
    delayed.inject(Fault("delay", seconds=60))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(send(http, served.url), timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()

    await served.close()

    assert loop.time() - started < 5
    assert delayed.messages == []


async def test_a_busy_port_is_the_oserror_of_the_bind():
    # The sandbox knows nothing of the server's ListenError: the server words the OSError.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(OSError, match="address already in use") as raised:
            await start_sandbox(Sandbox(), "127.0.0.1", port)
    assert raised.value.errno == errno.EADDRINUSE


# -- architecture ---------------------------------------------------------------------------

SERVER_PACKAGE = "yunpian_sms_server"
SANDBOX_PACKAGE = sandbox_package.__name__


def imported_modules(tree: ast.Module, package: str) -> Iterator[str]:
    """Every module an import in the tree names, relative imports resolved against `package`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if module == SERVER_PACKAGE:  # `from yunpian_sms_server import x`: x is a module
                yield from (f"{module}.{alias.name}" for alias in node.names)
            else:
                yield module


def test_the_sandbox_imports_nothing_of_the_server_outside_itself():
    entry = Path(sandbox_package.__file__ or "")
    # The sandbox is a package: every file of it; were it a module, that one file.
    sources = sorted(entry.parent.glob("*.py")) if entry.name == "__init__.py" else [entry]
    outside = {
        f"{source.name}: {module}"
        for source in sources
        for module in imported_modules(ast.parse(source.read_text("utf-8")), SANDBOX_PACKAGE)
        if module.partition(".")[0] == SERVER_PACKAGE
        and module != SANDBOX_PACKAGE
        and not module.startswith(SANDBOX_PACKAGE + ".")
    }
    assert outside == set()
    assert len(sources) > 1

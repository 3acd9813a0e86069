"""The template checker against a running sandbox: local checks, matching, cache, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import (
    GENERIC_ID,
    GENERIC_TEMPLATE,
    INTERNATIONAL_ID,
    INTERNATIONAL_TEMPLATE,
    SIGN_IN_ID,
    SIGN_IN_TEMPLATE,
    FakeClock,
    free_port,
    make_config,
    tpl_gets,
)

from yunpian_sms_server.account_templates import ApprovalStatus, parse_account_templates
from yunpian_sms_server.app import open_yunpian_session, yunpian_client
from yunpian_sms_server.config import DEFAULT_REMOTE_CACHE_S, YunpianConfig
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.sandbox import (
    DEFAULT_SIGNATURE,
    SANDBOX_API_KEY,
    TPL_GET_PATH,
    Fault,
    RunningSandbox,
    SandboxTemplate,
)
from yunpian_sms_server.template_check import TemplateCheck, TemplateChecker
from yunpian_sms_server.templates import (
    ProblemReason,
    TemplateBook,
    configured_templates,
    yunpian_form,
)

TYPO_TEMPLATE = "您的登陆验证码是{{code}}，5分钟内有效。"  # 登陆 where the approved one has 登录


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_yunpian_session(YunpianConfig(timeout_seconds=2.0)) as opened:
        yield opened


def make_checker(
    session: aiohttp.ClientSession,
    base_url: str,
    clock: FakeClock,
    *,
    api_key: str = SANDBOX_API_KEY,
    timeout_s: float = 2.0,
) -> TemplateChecker:
    config = YunpianConfig(api_key=api_key, base_url=base_url, timeout_seconds=timeout_s)
    return TemplateChecker(
        yunpian_client(session, config), cache_ttl_s=DEFAULT_REMOTE_CACHE_S, clock=clock
    )


@pytest.fixture
async def checker(
    session: aiohttp.ClientSession, sandbox: RunningSandbox, clock: FakeClock
) -> AsyncIterator[TemplateChecker]:
    checker = make_checker(session, sandbox.url, clock)
    yield checker
    await checker.close()


def reasons(result: TemplateCheck) -> list[ProblemReason]:
    return [problem.reason for problem in result.problems]


def only_message(result: TemplateCheck, reason: ProblemReason) -> str:
    [problem] = result.problems
    assert problem.reason is reason
    return problem.message


def registered(content: str, signature: str = DEFAULT_SIGNATURE) -> str:
    return signature + yunpian_form(content)


async def test_an_approved_template_is_valid_with_its_id_and_registration_form(
    checker: TemplateChecker,
) -> None:
    result = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert result == TemplateCheck(
        valid=True,
        problems=(),
        content=SIGN_IN_TEMPLATE,
        yunpian_content="您的登录验证码是#code#，5分钟内有效。",
        status=ApprovalStatus.APPROVED,
        template_id=str(SIGN_IN_ID),
        status_reason="",
        estimated_segments=1,
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", ProblemReason.EMPTY_CONTENT),
        ("您的验证码已发送。", ProblemReason.CODE_PLACEHOLDER_MISSING),
        ("验证码{{code}}，再说一遍{{ code }}", ProblemReason.CODE_PLACEHOLDER_REPEATED),
        ("{{name}}您好，验证码{{code}}", ProblemReason.UNKNOWN_PLACEHOLDER),
        ("【我的签名】验证码{{code}}", ProblemReason.SIGNATURE_INCLUDED),
        ("验证码{{code}}" + "。" * 500, ProblemReason.TOO_LONG),
    ],
)
async def test_each_local_problem_is_reported_without_asking_yunpian_when_skipped(
    checker: TemplateChecker, sandbox: RunningSandbox, content: str, reason: ProblemReason
) -> None:
    result = await checker.check(content, international=False, skip_remote=True)
    assert reasons(result) == [reason]
    assert result.problems[0].message.endswith(".")
    assert not result.valid
    assert result.status is ApprovalStatus.NOT_CHECKED
    assert tpl_gets(sandbox) == 0


async def test_local_problems_make_an_approved_template_invalid(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    content = "{{code}}是验证码，{{name}}"
    sandbox.sandbox.add_template(SandboxTemplate(31, "#code#是验证码，{{name}}"))
    result = await checker.check(content, international=False)
    assert result.status is ApprovalStatus.APPROVED
    assert result.template_id == "31"
    assert reasons(result) == [ProblemReason.UNKNOWN_PLACEHOLDER]
    assert not result.valid


async def test_skip_remote_reports_a_well_formed_template_valid_and_not_checked(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    result = await checker.check("从未注册过的模板{{code}}", international=False, skip_remote=True)
    assert result.valid
    assert result.status is ApprovalStatus.NOT_CHECKED
    assert (result.problems, result.template_id) == ((), "")
    assert result.yunpian_content == "从未注册过的模板#code#"
    assert tpl_gets(sandbox) == 0


@pytest.mark.parametrize(
    ("body_length", "segments"),
    # rendered length = body + a 10-character code + an 8-character signature allowance
    [(52, 1), (53, 2), (116, 2), (117, 3)],
)
async def test_estimated_segments_follow_the_70_67_rule_with_the_signature(
    checker: TemplateChecker, body_length: int, segments: int
) -> None:
    result = await checker.check(
        "x" * body_length + "{{code}}", international=False, skip_remote=True
    )
    assert result.estimated_segments == segments


async def test_a_template_in_review_is_pending(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "CHECKING")
    result = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert (result.status, result.template_id) == (ApprovalStatus.PENDING, str(SIGN_IN_ID))
    message = only_message(result, ProblemReason.TEMPLATE_PENDING)
    assert f"reviewing template {SIGN_IN_ID}" in message
    assert not result.valid


async def test_a_rejected_template_carries_yunpians_reason(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "FAIL", "签名不规范")
    result = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert (result.status, result.template_id) == (ApprovalStatus.REJECTED, str(SIGN_IN_ID))
    assert result.status_reason == "签名不规范"
    message = only_message(result, ProblemReason.TEMPLATE_REJECTED)
    assert f"rejected template {SIGN_IN_ID}: 签名不规范." in message
    assert not result.valid


async def test_of_several_exact_matches_approved_beats_pending_beats_rejected(
    checker: TemplateChecker, sandbox: RunningSandbox, clock: FakeClock
) -> None:
    account = sandbox.sandbox
    account.add_template(SandboxTemplate(10, registered(SIGN_IN_TEMPLATE, "【旧签名】"), "FAIL"))
    account.add_template(SandboxTemplate(11, registered(SIGN_IN_TEMPLATE, ""), "CHECKING"))
    expected = [("1", ApprovalStatus.APPROVED), ("11", ApprovalStatus.PENDING)]
    expected.append(("10", ApprovalStatus.REJECTED))
    for tpl_id, status in expected:
        result = await checker.check(SIGN_IN_TEMPLATE, international=False)
        assert (result.template_id, result.status) == (tpl_id, status)
        account.remove_template(int(tpl_id))
        clock.advance(DEFAULT_REMOTE_CACHE_S)


async def test_not_found_names_the_closest_approved_template_and_where_it_differs(
    checker: TemplateChecker,
) -> None:
    result = await checker.check(TYPO_TEMPLATE, international=False)
    assert (result.status, result.template_id) == (ApprovalStatus.NOT_FOUND, "")
    message = only_message(result, ProblemReason.NO_MATCHING_TEMPLATE)
    assert f'closest is template {SIGN_IN_ID} "您的登录验证码是#code#，5分钟内有效。"' in message
    assert 'at character 4 the template has "陆" where YunPian\'s has "录"' in message
    assert not result.valid


@pytest.mark.parametrize(
    ("content", "difference"),
    [
        ("您的登录验证码是{{code}}，5分钟内有效！", 'at character 22 the template has "！" where'),
        ("您的登录验证码是{{code}}，5分钟内有效。谢谢", 'has "谢谢", which YunPian\'s lacks'),
        ("您的登录验证码是{{code}}。", 'YunPian\'s has "，5分钟内有效", which the template lacks'),
    ],
)
async def test_not_found_describes_a_change_an_addition_and_an_omission(
    checker: TemplateChecker, content: str, difference: str
) -> None:
    result = await checker.check(content, international=False)
    assert difference in only_message(result, ProblemReason.NO_MATCHING_TEMPLATE)


async def test_the_closest_candidate_is_an_approved_one(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "FAIL", "不规范")
    result = await checker.check(TYPO_TEMPLATE, international=False)
    message = only_message(result, ProblemReason.NO_MATCHING_TEMPLATE)
    assert f"closest is template {GENERIC_ID} " in message


async def test_not_found_says_when_yunpian_has_no_approved_template_of_the_kind(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.remove_template(INTERNATIONAL_ID)
    result = await checker.check("Code: {{code}}", international=True)
    message = only_message(result, ProblemReason.NO_MATCHING_TEMPLATE)
    assert "no approved international template" in message


async def test_comparison_is_exact_down_to_whitespace(checker: TemplateChecker) -> None:
    result = await checker.check(SIGN_IN_TEMPLATE + " ", international=False)
    assert result.status is ApprovalStatus.NOT_FOUND


async def test_templates_registered_without_a_signature_match_too(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.add_template(SandboxTemplate(20, "无签名的验证码#code#"))
    result = await checker.check("无签名的验证码{{ code }}", international=False)
    assert (result.status, result.template_id) == (ApprovalStatus.APPROVED, "20")


async def test_domestic_and_international_templates_are_matched_separately(
    checker: TemplateChecker,
) -> None:
    international = await checker.check(INTERNATIONAL_TEMPLATE, international=True)
    assert (international.status, international.template_id) == (
        ApprovalStatus.APPROVED,
        str(INTERNATIONAL_ID),
    )
    as_domestic = await checker.check(INTERNATIONAL_TEMPLATE, international=False)
    assert as_domestic.status is ApprovalStatus.NOT_FOUND
    message = only_message(as_domestic, ProblemReason.NO_MATCHING_TEMPLATE)
    assert f"only as international template {INTERNATIONAL_ID}; register it as a domestic" in (
        message
    )
    as_international = await checker.check(GENERIC_TEMPLATE, international=True)
    assert as_international.status is ApprovalStatus.NOT_FOUND
    assert f"only as domestic template {GENERIC_ID}; register it as an international" in (
        as_international.problems[0].message
    )


async def test_a_burst_of_checks_is_one_upstream_call_until_the_cache_expires(
    checker: TemplateChecker, sandbox: RunningSandbox, clock: FakeClock
) -> None:
    # The list answers slowly, so every check of the burst arrives while it is being fetched.
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.1, path=TPL_GET_PATH))
    results = await asyncio.gather(
        *(checker.check(SIGN_IN_TEMPLATE, international=False) for _ in range(20))
    )
    assert all(result.status is ApprovalStatus.APPROVED for result in results)
    assert tpl_gets(sandbox) == 1
    clock.advance(DEFAULT_REMOTE_CACHE_S - 1)
    await checker.check(GENERIC_TEMPLATE, international=False)
    assert tpl_gets(sandbox) == 1
    clock.advance(1)
    await checker.check(GENERIC_TEMPLATE, international=False)
    assert tpl_gets(sandbox) == 2


async def test_check_many_asks_yunpian_once(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    results = await checker.check_many(
        [(SIGN_IN_TEMPLATE, False), (INTERNATIONAL_TEMPLATE, True), (TYPO_TEMPLATE, False)]
    )
    assert [r.status for r in results] == [
        ApprovalStatus.APPROVED,
        ApprovalStatus.APPROVED,
        ApprovalStatus.NOT_FOUND,
    ]
    assert tpl_gets(sandbox) == 1


async def test_the_cache_shows_a_status_change_only_after_it_expires(
    checker: TemplateChecker, sandbox: RunningSandbox, clock: FakeClock
) -> None:
    assert (await checker.check(SIGN_IN_TEMPLATE, international=False)).valid
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "CHECKING")
    assert (await checker.check(SIGN_IN_TEMPLATE, international=False)).valid
    clock.advance(DEFAULT_REMOTE_CACHE_S)
    pending = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert pending.status is ApprovalStatus.PENDING


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (Fault(kind="http_status", status=502, path=TPL_GET_PATH), "HTTP 502"),
        (Fault(kind="malformed", body="not_json", path=TPL_GET_PATH), "not the documented"),
        (Fault(kind="malformed", body="wrong_shape", path=TPL_GET_PATH), "not the documented"),
        (Fault(kind="drop", path=TPL_GET_PATH), "connection to YunPian was lost"),
    ],
)
async def test_a_remote_without_a_usable_answer_is_not_checked_and_not_cached(
    checker: TemplateChecker, sandbox: RunningSandbox, fault: Fault, why: str
) -> None:
    sandbox.sandbox.inject(fault)
    burst = await asyncio.gather(
        *(checker.check(SIGN_IN_TEMPLATE, international=False) for _ in range(5))
    )
    assert tpl_gets(sandbox) == 1  # the failed call was shared too
    for result in burst:
        assert result.status is ApprovalStatus.NOT_CHECKED
        assert not result.valid
        message = only_message(result, ProblemReason.REMOTE_CHECK_FAILED)
        assert message.startswith("The template was not checked at YunPian: ")
        assert why in message
    assert (await checker.check(SIGN_IN_TEMPLATE, international=False)).valid
    assert tpl_gets(sandbox) == 2


async def test_an_unreachable_remote_is_not_checked_and_local_problems_still_show(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    checker = make_checker(session, f"http://127.0.0.1:{free_port()}", clock)
    result = await checker.check("{{code}}{{code}}", international=False)
    assert result.status is ApprovalStatus.NOT_CHECKED
    assert reasons(result) == [
        ProblemReason.CODE_PLACEHOLDER_REPEATED,
        ProblemReason.REMOTE_CHECK_FAILED,
    ]
    assert "YunPian could not be reached" in result.problems[1].message
    assert not result.valid


async def test_an_upstream_timeout_is_not_checked(
    session: aiohttp.ClientSession, sandbox: RunningSandbox, clock: FakeClock
) -> None:
    checker = make_checker(session, sandbox.url, clock, timeout_s=0.2)
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.5, path=TPL_GET_PATH))
    result = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert result.status is ApprovalStatus.NOT_CHECKED
    assert "did not answer in time" in only_message(result, ProblemReason.REMOTE_CHECK_FAILED)


async def test_a_short_deadline_stops_waiting_while_the_shared_call_goes_on(
    checker: TemplateChecker, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.4, path=TPL_GET_PATH))
    started = time.monotonic()
    hurried = await checker.check(SIGN_IN_TEMPLATE, international=False, time_remaining=0.15)
    assert time.monotonic() - started < 0.3
    assert hurried.status is ApprovalStatus.NOT_CHECKED
    assert "did not answer in time" in hurried.problems[0].message
    patient = await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert patient.status is ApprovalStatus.APPROVED
    assert tpl_gets(sandbox) == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (-1, Reason.PROVIDER_AUTH_FAILED),
        (-5, Reason.PROVIDER_QUOTA_EXCEEDED),
        (-50, Reason.PROVIDER_UNAVAILABLE),
    ],
)
async def test_a_yunpian_error_code_raises_its_service_error_and_is_not_cached(
    checker: TemplateChecker, sandbox: RunningSandbox, code: int, reason: Reason
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=code, path=TPL_GET_PATH))
    with pytest.raises(ServiceError) as caught:
        await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert (caught.value.reason, caught.value.yunpian_code) == (reason, code)
    assert (await checker.check(SIGN_IN_TEMPLATE, international=False)).valid


async def test_a_wrong_api_key_is_provider_auth_failed_without_the_key(
    session: aiohttp.ClientSession, sandbox: RunningSandbox, clock: FakeClock
) -> None:
    wrong_key = "f" * 32
    checker = make_checker(session, sandbox.url, clock, api_key=wrong_key)
    with pytest.raises(ServiceError) as caught:
        await checker.check(SIGN_IN_TEMPLATE, international=False)
    assert caught.value.reason is Reason.PROVIDER_AUTH_FAILED
    assert wrong_key not in str(caught.value) + repr(caught.value.metadata)
    skipped = await checker.check(SIGN_IN_TEMPLATE, international=False, skip_remote=True)
    assert skipped.valid


def account_item(**overrides: Any) -> dict[str, Any]:
    item = {
        "tpl_id": 7,
        "tpl_content": "【签名】验证码#code#",
        "check_status": "SUCCESS",
        "reason": None,
        "country_code": None,
        "lang": None,
    }
    return {**item, **overrides}


def test_parse_account_templates_strips_signatures_and_keeps_ids_as_decimal_strings() -> None:
    big_id = 2**60 + 1
    [domestic, international] = parse_account_templates(
        [account_item(tpl_id=big_id), account_item(tpl_id="8", country_code="US,SG")]
    )
    assert (domestic.tpl_id, domestic.body, domestic.international) == (
        str(big_id),
        "验证码#code#",
        False,
    )
    assert (international.tpl_id, international.international) == ("8", True)


@pytest.mark.parametrize(
    "item",
    [
        account_item(tpl_id=True),
        account_item(tpl_id="x1"),
        account_item(tpl_content=None),
        account_item(check_status=1),
        account_item(reason=3),
        account_item(country_code=["US"]),
    ],
)
def test_parse_account_templates_refuses_items_not_as_documented(item: dict[str, Any]) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_account_templates([item])
    assert caught.value.reason is Reason.PROVIDER_BAD_RESPONSE


def test_configured_templates_lists_domestic_then_international() -> None:
    templates = configured_templates(make_config().templates, international_enabled=True)
    assert [template.label for template in templates] == [
        "SignIn",
        "Register",
        "ForgotPassword",
        "Generic",
        "international Generic",
    ]
    assert templates[-1].content == INTERNATIONAL_TEMPLATE


def test_configured_templates_adds_domestic_fallbacks_when_international_lacks_generic() -> None:
    book = TemplateBook({"SignIn": SIGN_IN_TEMPLATE, "Generic": GENERIC_TEMPLATE}, {"SignIn": "x"})
    labels = [t.label for t in configured_templates(book, international_enabled=True)]
    assert labels == [
        "SignIn",
        "Generic",
        "international SignIn",
        "international Generic (domestic template)",
    ]
    disabled = [t.label for t in configured_templates(book, international_enabled=False)]
    assert disabled == ["SignIn", "Generic", "international SignIn"]

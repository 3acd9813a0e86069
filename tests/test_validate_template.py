"""ValidateTemplate end to end (SDK -> gRPC server -> sandbox) and verify_on_start; the
validate-template command is in test_cli.py."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import (
    BASE_CONFIG,
    GENERIC_ID,
    GENERIC_TEMPLATE,
    INTERNATIONAL_ID,
    INTERNATIONAL_TEMPLATE,
    SIGN_IN_ID,
    SIGN_IN_TEMPLATE,
    StartServer,
    free_port,
    log_events,
    make_config,
    target_of,
    tpl_gets,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import (
    AsyncSmsClient,
    FailedPreconditionError,
    InvalidArgumentError,
    from_rpc_error,
)
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.config import ConfigError
from yunpian_sms_server.sandbox import (
    DEFAULT_SIGNATURE,
    SANDBOX_API_KEY,
    TPL_GET_PATH,
    Fault,
    RunningSandbox,
)
from yunpian_sms_server.service import MAX_TEMPLATE_CONTENT_LENGTH
from yunpian_sms_server.templates import TemplateBook, yunpian_form

SERVICE = "yunpian.sms.v1.SmsService"
TYPO_TEMPLATE = "您的登陆验证码是{{code}}，5分钟内有效。"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Quick re-checks, so verify_on_start notices an approval within a test's patience.
FAST_RECHECK_S = 0.05


def templates_with(**options: object) -> dict[str, Any]:
    return {**BASE_CONFIG["templates"], **options}


# --- the RPC ----------------------------------------------------------------------------------


async def test_a_configured_usage_type_is_approved_with_every_field(
    client: AsyncSmsClient,
) -> None:
    report = await client.validate_template(usage_type="SignIn")
    assert report == pb.ValidateTemplateResponse(
        valid=True,
        content=SIGN_IN_TEMPLATE,
        yunpian_content=yunpian_form(SIGN_IN_TEMPLATE),
        status=pb.TEMPLATE_STATUS_APPROVED,
        template_id=str(SIGN_IN_ID),
        estimated_segments=1,
    )


@pytest.mark.parametrize(
    ("usage_type", "international", "content", "template_id"),
    [
        # the international Generic
        ("SignIn", True, INTERNATIONAL_TEMPLATE, str(INTERNATIONAL_ID)),
        # no BindMfa template: Generic
        ("BindMfa", False, GENERIC_TEMPLATE, str(GENERIC_ID)),
        (pb.USAGE_TYPE_UNSPECIFIED, False, GENERIC_TEMPLATE, str(GENERIC_ID)),
    ],
)
async def test_a_usage_type_is_checked_with_the_template_sendcode_would_use(
    client: AsyncSmsClient,
    usage_type: str | int,
    international: bool,
    content: str,
    template_id: str,
) -> None:
    report = await client.validate_template(usage_type=usage_type, international=international)
    assert (report.content, report.template_id, report.valid) == (content, template_id, True)


async def test_ad_hoc_content_reports_local_and_remote_problems(client: AsyncSmsClient) -> None:
    report = await client.validate_template(content="【签名】验证码{{code}}，{{name}}")
    assert not report.valid
    assert report.status == pb.TEMPLATE_STATUS_NOT_FOUND
    assert [problem.reason for problem in report.problems] == [
        "UNKNOWN_PLACEHOLDER",
        "SIGNATURE_INCLUDED",
        "NO_MATCHING_TEMPLATE",
    ]
    assert report.yunpian_content == "【签名】验证码#code#，{{name}}"


async def test_not_found_names_the_closest_template_over_the_wire(client: AsyncSmsClient) -> None:
    report = await client.validate_template(content=TYPO_TEMPLATE)
    assert report.status == pb.TEMPLATE_STATUS_NOT_FOUND
    [problem] = report.problems
    assert problem.reason == "NO_MATCHING_TEMPLATE"
    assert f"closest is template {SIGN_IN_ID}" in problem.message
    assert "at character 4" in problem.message


async def test_empty_content_is_checked_as_content_not_refused(client: AsyncSmsClient) -> None:
    report = await client.validate_template(content="", skip_remote=True)
    assert [problem.reason for problem in report.problems] == ["EMPTY_CONTENT"]
    assert report.status == pb.TEMPLATE_STATUS_NOT_CHECKED


async def test_skip_remote_answers_without_asking_yunpian(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    report = await client.validate_template(usage_type="Register", skip_remote=True)
    assert report.valid
    assert report.status == pb.TEMPLATE_STATUS_NOT_CHECKED
    assert tpl_gets(sandbox) == 0


async def post_template(sandbox: RunningSandbox, template: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/sandbox/templates", json=template) as response,
    ):
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("check_status", "reason", "status", "problem"),
    [
        ("CHECKING", None, pb.TEMPLATE_STATUS_PENDING, "TEMPLATE_PENDING"),
        ("FAIL", "变量格式不正确", pb.TEMPLATE_STATUS_REJECTED, "TEMPLATE_REJECTED"),
    ],
)
async def test_templates_in_review_or_rejected_are_reported_so(
    client: AsyncSmsClient,
    sandbox: RunningSandbox,
    check_status: str,
    reason: str | None,
    status: int,
    problem: str,
) -> None:
    await post_template(
        sandbox,
        {
            "tpl_id": SIGN_IN_ID,
            "tpl_content": DEFAULT_SIGNATURE + yunpian_form(SIGN_IN_TEMPLATE),
            "check_status": check_status,
            "reason": reason,
        },
    )
    report = await client.validate_template(usage_type="SignIn")
    assert not report.valid
    assert (report.status, report.template_id) == (status, str(SIGN_IN_ID))
    assert report.status_reason == (reason or "")
    assert [p.reason for p in report.problems] == [problem]


async def test_concurrent_validations_share_one_upstream_call(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.1, path=TPL_GET_PATH))
    reports = await asyncio.gather(
        *(client.validate_template(usage_type="SignIn") for _ in range(20))
    )
    assert all(report.valid for report in reports)
    assert tpl_gets(sandbox) == 1


async def test_an_unreachable_yunpian_is_not_checked_with_a_problem(
    start_server: StartServer,
) -> None:
    server = await start_server(base_url=f"http://127.0.0.1:{free_port()}")
    async with AsyncSmsClient(target_of(server)) as client:
        report = await client.validate_template(usage_type="SignIn")
    assert not report.valid
    assert report.status == pb.TEMPLATE_STATUS_NOT_CHECKED
    [problem] = report.problems
    assert problem.reason == "REMOTE_CHECK_FAILED"
    assert "could not be reached" in problem.message


async def test_a_yunpian_auth_error_maps_through_the_error_table(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=-1, path=TPL_GET_PATH))
    with pytest.raises(FailedPreconditionError) as caught:
        await client.validate_template(usage_type="SignIn")
    assert caught.value.reason == "PROVIDER_AUTH_FAILED"
    assert caught.value.yunpian_code == -1
    assert SANDBOX_API_KEY not in caught.value.message


async def test_a_request_without_usage_type_or_content_is_invalid(server: SmsServer) -> None:
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ValidateTemplate(pb.ValidateTemplateRequest(skip_remote=True))
    error = from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "INVALID_TEMPLATE"
    assert [field for field, _ in error.field_violations] == ["template"]


@pytest.mark.parametrize(
    ("arguments", "reason", "field"),
    [
        ({"usage_type": 99}, "INVALID_USAGE_TYPE", "usage_type"),
        (
            {"content": "验" * (MAX_TEMPLATE_CONTENT_LENGTH + 1)},
            "INVALID_TEMPLATE",
            "content",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    client: AsyncSmsClient,
    sandbox: RunningSandbox,
    arguments: dict[str, Any],
    reason: str,
    field: str,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.validate_template(**arguments)
    assert caught.value.reason == reason
    assert [name for name, _ in caught.value.field_violations] == [field]
    assert tpl_gets(sandbox) == 0


async def test_content_at_the_length_cap_is_checked(client: AsyncSmsClient) -> None:
    content = "{{code}}" + "验" * (MAX_TEMPLATE_CONTENT_LENGTH - 8)
    report = await client.validate_template(content=content)
    assert "TOO_LONG" in [problem.reason for problem in report.problems]


async def test_a_usage_type_without_any_template_is_template_not_configured(
    start_server: StartServer,
) -> None:
    config = dataclasses.replace(make_config(), templates=TemplateBook({}, {}))
    server = await start_server(config)
    async with AsyncSmsClient(target_of(server)) as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.validate_template(usage_type="SignIn")
    assert caught.value.reason == "TEMPLATE_NOT_CONFIGURED"


async def test_each_validation_logs_one_rpc_event_with_usage_type_and_international(
    log_output: io.StringIO, client: AsyncSmsClient
) -> None:
    await client.validate_template(usage_type="SignIn", international=True)
    await client.validate_template(content=TYPO_TEMPLATE)
    first, second = log_events(log_output, "rpc")
    assert (first["rpc"], first["grpc_code"]) == ("ValidateTemplate", "OK")
    assert (first["usage_type"], first["international"]) == ("SignIn", True)
    assert (second["usage_type"], second["international"]) == (None, False)
    assert SANDBOX_API_KEY not in log_output.getvalue()


# --- verify_on_start --------------------------------------------------------------------------


async def health_of(server: SmsServer) -> list[int]:
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answers = [
            await stub.Check(health_pb2.HealthCheckRequest(service=service))
            for service in ("", SERVICE)
        ]
    return [answer.status for answer in answers]


async def test_verify_on_start_serves_when_every_template_is_approved(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    config = make_config(templates=templates_with(verify_on_start=True))
    server = await start_server(config)
    assert await health_of(server) == [SERVING, SERVING]
    assert tpl_gets(sandbox) == 1  # every template, one call


async def test_verify_on_start_holds_not_serving_until_yunpian_approves(
    start_server: StartServer, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "CHECKING")
    config = make_config(
        templates=templates_with(verify_on_start=True, remote_cache_seconds=FAST_RECHECK_S)
    )
    server = await start_server(config)
    assert await health_of(server) == [NOT_SERVING, NOT_SERVING]
    [failing, *_] = log_events(log_output, "template_not_approved")
    assert failing["usage_type"] == "SignIn"
    assert failing["international"] is False
    assert (failing["status"], failing["template_id"]) == ("PENDING", str(SIGN_IN_ID))
    assert "still reviewing" in failing["why"]
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        assert (await watch.read()).status == NOT_SERVING
        sandbox.sandbox.set_template_status(SIGN_IN_ID, "SUCCESS")
        assert (await asyncio.wait_for(watch.read(), 2.0)).status == SERVING
        watch.cancel()
    assert await health_of(server) == [SERVING, SERVING]
    assert log_events(log_output, "templates_approved")
    # Each round named only the one template still in review.
    assert all(e["usage_type"] == "SignIn" for e in log_events(log_output, "template_not_approved"))


async def test_verify_on_start_checks_international_templates_too(
    start_server: StartServer, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    sandbox.sandbox.set_template_status(INTERNATIONAL_ID, "FAIL", "Wrong language")
    server = await start_server(make_config(templates=templates_with(verify_on_start=True)))
    assert await health_of(server) == [NOT_SERVING, NOT_SERVING]
    [failing] = log_events(log_output, "template_not_approved")
    assert (failing["usage_type"], failing["international"]) == ("Generic", True)
    assert (failing["status"], failing["status_reason"]) == ("REJECTED", "Wrong language")


async def test_verify_on_start_stays_not_serving_while_yunpian_is_unreachable(
    start_server: StartServer, log_output: io.StringIO
) -> None:
    config = make_config(templates=templates_with(verify_on_start=True))
    server = await start_server(config, base_url=f"http://127.0.0.1:{free_port()}")
    assert await health_of(server) == [NOT_SERVING, NOT_SERVING]
    failing = log_events(log_output, "template_not_approved")
    assert len(failing) == 5  # four domestic templates and the international one
    assert {event["status"] for event in failing} == {"NOT_CHECKED"}
    assert "could not be reached" in failing[0]["why"]


async def test_verify_on_start_logs_a_yunpian_error_and_recovers(
    start_server: StartServer, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=-1, path=TPL_GET_PATH))
    config = make_config(
        templates=templates_with(verify_on_start=True, remote_cache_seconds=FAST_RECHECK_S)
    )
    server = await start_server(config)
    assert await health_of(server) == [NOT_SERVING, NOT_SERVING]
    [failed] = log_events(log_output, "template_check_failed")
    assert (failed["reason"], failed["yunpian_code"]) == ("PROVIDER_AUTH_FAILED", -1)
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        while (await asyncio.wait_for(watch.read(), 2.0)).status != SERVING:
            pass
        watch.cancel()
    assert SANDBOX_API_KEY not in log_output.getvalue()


async def test_stopping_ends_the_re_checks(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_template_status(GENERIC_ID, "CHECKING")
    config = make_config(
        templates=templates_with(verify_on_start=True, remote_cache_seconds=FAST_RECHECK_S)
    )
    server = await start_server(config)
    await asyncio.sleep(FAST_RECHECK_S * 4)
    assert tpl_gets(sandbox) >= 2  # it re-checks while a template is pending
    await server.stop()
    calls = tpl_gets(sandbox)
    await asyncio.sleep(FAST_RECHECK_S * 4)
    assert tpl_gets(sandbox) == calls


@pytest.mark.parametrize("value", ["yes", 0])
def test_verify_on_start_and_the_cache_period_are_validated(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(templates=templates_with(verify_on_start=value, remote_cache_seconds=value))
    assert [problem.key for problem in caught.value.problems] == [
        "templates.verify_on_start",
        "templates.remote_cache_seconds",
    ]


def test_the_options_are_not_usage_types_and_default_sensibly() -> None:
    config = make_config(templates=templates_with(verify_on_start=True, remote_cache_seconds=5))
    assert config.template_checks.verify_on_start
    assert config.template_checks.remote_cache_seconds == 5.0
    assert "verify_on_start" not in config.templates.domestic
    defaults = make_config()
    assert not defaults.template_checks.verify_on_start
    assert defaults.template_checks.remote_cache_seconds == 60.0

"""Callers without the Python SDK: Node.js loading protos/ directly (against the in-process
server; a verification and delivery reports against `serve --sandbox`), and grpcurl via
reflection."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import BASE_CONFIG, StartServe, push_delivery

from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import RunningSandbox

REPO = Path(__file__).resolve().parent.parent
NODE_CLIENT = REPO / "examples" / "node" / "sms_client.js"
GRPCURL = Path(sys.executable).parent / "grpcurl"
TOOL_TIMEOUT_S = 60.0


async def run_tool(*command: str) -> tuple[int, str, str]:
    """Runs a tool without blocking the event loop the in-process server shares."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(REPO / "node_modules")},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TOOL_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def node(*args: str) -> dict[str, Any]:
    node_binary = shutil.which("node")
    assert node_binary is not None, "node is part of the toolchain the README requires"
    code, stdout, stderr = await run_tool(node_binary, str(NODE_CLIENT), *args)
    assert code == 0, stderr
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_node_client_sends_a_code(server: SmsServer, sandbox: RunningSandbox) -> None:
    result = await node(
        f"127.0.0.1:{server.port}", "send", "+86 138-0013-8000", "482913", "USAGE_TYPE_SIGN_IN"
    )
    assert result["ok"] is True
    response = result["response"]
    assert response["message_id"] == str(sandbox.sandbox.messages[0].sid)
    assert response["mobile"] == "13800138000"
    assert response["fee"] == "0.05"
    assert sandbox.sandbox.messages[0].code == "482913"


async def test_node_client_validates_a_template(server: SmsServer) -> None:
    result = await node(f"127.0.0.1:{server.port}", "validate", "USAGE_TYPE_SIGN_IN")
    assert result["ok"] is True
    report = result["response"]
    assert report["valid"] is True
    assert report["status"] == "TEMPLATE_STATUS_APPROVED"
    assert "#code#" in report["yunpian_content"]
    assert report["template_id"].isdigit()


async def test_node_client_decodes_the_error_info_of_a_rich_error(server: SmsServer) -> None:
    result = await node(f"127.0.0.1:{server.port}", "send", "not-a-phone", "482913")
    assert result["ok"] is False
    assert result["code"] == 3  # INVALID_ARGUMENT
    assert result["error_info"]["reason"] == "INVALID_PHONE_NUMBER"
    assert result["error_info"]["domain"] == "yunpian.sms.v1"


async def test_node_client_reads_yunpian_codes_from_error_metadata(
    server: SmsServer, sandbox: RunningSandbox
) -> None:
    from yunpian_sms_server.sandbox import Fault

    sandbox.sandbox.inject(Fault(kind="error", code=22))
    result = await node(f"127.0.0.1:{server.port}", "send", "13800138000", "482913")
    assert result["code"] == 8  # RESOURCE_EXHAUSTED
    assert result["error_info"]["reason"] == "PROVIDER_RATE_LIMITED"
    assert result["error_info"]["metadata"]["yunpian_code"] == "22"


class ServedSandbox:
    """A `serve --sandbox` process: its gRPC target and its sandbox's HTTP API."""

    def __init__(self, target: str, sandbox_url: str) -> None:
        self.target = target
        self.sandbox_url = sandbox_url

    async def sandbox_api(self, method: str, path: str, body: object = None) -> Any:
        """One request to the sandbox's control API; its JSON answer."""
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.sandbox_url}{path}", json=body) as answer,
        ):
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def last_code(self, mobile: str) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.sandbox_url}/sandbox/messages", params={"mobile": mobile}) as answer,
        ):
            messages = (await answer.json())["messages"]
        assert messages, f"no SMS to {mobile}"
        code: str = messages[-1]["code"]
        return code


@pytest.fixture
async def served(start_serve: StartServe) -> ServedSandbox:
    """`yunpian-sms serve --sandbox`: verifications on, with a random secret."""
    process = await start_serve(BASE_CONFIG, "--sandbox")
    [serving] = process.events_named("serving")
    return ServedSandbox(process.target, serving["sandbox"])


async def test_node_client_verifies_a_number_against_serve_sandbox(served: ServedSandbox) -> None:
    started = await node(served.target, "start", "+86 138-0013-8000", "USAGE_TYPE_SIGN_IN")
    assert started["ok"] is True, started
    verification = started["response"]
    assert verification["verification_id"].startswith("vf_")
    assert verification["phone_number"] == "13800138000"
    assert verification["usage_type"] == "USAGE_TYPE_SIGN_IN"
    assert verification["status"] == "VERIFICATION_STATUS_PENDING"
    assert (verification["send_count"], verification["checks_remaining"]) == (1, 5)
    code = await served.last_code("13800138000")
    wrong_code = f"{(int(code) + 1) % 1_000_000:06d}"

    wrong = await node(served.target, "check", verification["verification_id"], wrong_code)
    right = await node(served.target, "check", verification["verification_id"], code)
    again = await node(served.target, "check", verification["verification_id"], code)

    # A wrong code is an answer, not an error; the right one approves, once.
    assert wrong["ok"] is True
    assert wrong["response"]["approved"] is False
    assert wrong["response"]["verification"]["checks_remaining"] == 4
    assert right["ok"] is True
    assert right["response"]["approved"] is True
    assert right["response"]["verification"]["status"] == "VERIFICATION_STATUS_APPROVED"
    assert again["ok"] is False
    assert again["code"] == 9  # FAILED_PRECONDITION
    assert again["error_info"]["reason"] == "VERIFICATION_APPROVED"
    assert again["error_info"]["metadata"]["verification_id"] == verification["verification_id"]


async def test_node_client_checks_by_number_and_cancels(served: ServedSandbox) -> None:
    by_number = await node(served.target, "start", "13900139000", "USAGE_TYPE_REGISTER")
    code = await served.last_code("13900139000")
    approved = await node(served.target, "check-number", "13900139000", code, "USAGE_TYPE_REGISTER")
    to_cancel = await node(served.target, "start", "13700137000")
    verification_id = to_cancel["response"]["verification_id"]
    canceled = await node(served.target, "cancel", verification_id)
    after = await node(served.target, "check-number", "13700137000", "123456")
    unknown = await node(served.target, "cancel", "vf_" + "A" * 32)

    assert by_number["ok"] is True, by_number
    assert approved["response"]["approved"] is True
    assert (
        approved["response"]["verification"]["verification_id"]
        == (by_number["response"]["verification_id"])
    )
    assert canceled["ok"] is True
    assert canceled["response"]["status"] == "VERIFICATION_STATUS_CANCELED"
    # Canceled: the number has no pending verification left to check.
    assert (after["ok"], after["code"]) == (False, 5)  # NOT_FOUND
    assert after["error_info"]["reason"] == "VERIFICATION_NOT_FOUND"
    assert unknown["error_info"]["reason"] == "VERIFICATION_NOT_FOUND"


PUSH_TOKEN = "node-example-push-token-0123456789abcdef"
# How long the sandbox holds each report before pushing it.
HELD_REPORT_S = 3.0
SETTLE_WITHIN_S = 20.0


@pytest.fixture
async def served_push(start_serve: StartServe) -> ServedSandbox:
    """`serve --sandbox` with `[delivery] mode = "push"`: each send names the server's own
    report endpoint as its callback_url, where the sandbox posts the report."""
    delivery = push_delivery(PUSH_TOKEN)
    process = await start_serve({**BASE_CONFIG, "delivery": delivery}, "--sandbox")
    [serving] = process.events_named("serving")
    return ServedSandbox(process.target, serving["sandbox"])


async def settled_by_node(target: str, message_id: str) -> dict[str, Any]:
    """The Node example's `status` answer once the message is no longer PENDING."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_WITHIN_S
    while True:
        result = await node(target, "status", message_id)
        assert result["ok"] is True, result
        if result["response"]["state"] != "DELIVERY_STATE_PENDING":
            status: dict[str, Any] = result["response"]
            return status
        assert loop.time() < deadline, f"{message_id} still PENDING"
        await asyncio.sleep(0.2)


async def test_node_client_reads_the_delivery_reports_the_sandbox_pushed(
    served_push: ServedSandbox,
) -> None:
    target = served_push.target
    settings = {"delay_seconds": HELD_REPORT_S, "fail_mobiles": ["13900139000"]}
    await served_push.sandbox_api("POST", "/sandbox/reports", settings)
    sending = asyncio.get_running_loop().time()
    sent = await node(target, "send", "13800138000", "482913")
    failing = await node(target, "send", "13900139000", "482913")
    message_id = sent["response"]["message_id"]
    first = await node(target, "status", message_id)
    asked_within = asyncio.get_running_loop().time() - sending

    assert first["ok"] is True, first
    assert first["response"]["message_id"] == message_id
    if asked_within < HELD_REPORT_S:  # always, unless the machine is very slow
        assert first["response"]["state"] == "DELIVERY_STATE_PENDING"
        assert first["response"]["receive_time"] is None
    delivered = await settled_by_node(target, message_id)
    failed = await settled_by_node(target, failing["response"]["message_id"])
    unknown = await node(target, "status", "9007199254740993")
    malformed = await node(target, "status", "not-a-sid")
    stats = (await served_push.sandbox_api("GET", "/sandbox/reports"))["stats"]

    assert delivered["state"] == "DELIVERY_STATE_DELIVERED"
    assert delivered["carrier_code"] == "DELIVRD"
    # Timestamps as protobufjs gives them: seconds a decimal string (longs: String).
    assert int(delivered["receive_time"]["seconds"]) >= int(delivered["send_time"]["seconds"])
    assert failed["state"] == "DELIVERY_STATE_FAILED"
    assert (failed["carrier_code"], failed["carrier_detail"]) == ("UNDELIV", "用户关机")
    assert (unknown["ok"], unknown["code"]) == (False, 5)  # NOT_FOUND
    assert unknown["error_info"]["reason"] == "MESSAGE_NOT_FOUND"
    assert (malformed["code"], malformed["error_info"]["reason"]) == (3, "INVALID_MESSAGE_ID")
    # Pushed to the server's report endpoint, never pulled: the config's push mode was kept.
    assert (stats["push_successes"] >= 1, stats["pulls"]) == (True, 0)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    if not GRPCURL.exists():
        pytest.fail(f"grpcurl is not installed in the venv ({GRPCURL}); see requirements-dev.txt")
    return await run_tool(str(GRPCURL), *args)


async def test_grpcurl_lists_the_service_through_reflection(server: SmsServer) -> None:
    code, stdout, stderr = await grpcurl("-plaintext", f"127.0.0.1:{server.port}", "list")
    assert code == 0, stderr
    assert "yunpian.sms.v1.SmsService" in stdout.split()
    assert "grpc.health.v1.Health" in stdout.split()


async def test_grpcurl_calls_send_code_without_a_copy_of_the_proto(
    server: SmsServer, sandbox: RunningSandbox
) -> None:
    request = json.dumps(
        {"phone_number": "13800138000", "code": "551177", "usage_type": "USAGE_TYPE_SIGN_IN"}
    )
    code, stdout, stderr = await grpcurl(
        "-plaintext",
        "-d",
        request,
        f"127.0.0.1:{server.port}",
        "yunpian.sms.v1.SmsService/SendCode",
    )
    assert code == 0, stderr
    response = json.loads(stdout)
    assert response["message_id"] == str(
        sandbox.sandbox.messages[0].sid
    )  # grpcurl 1.8 keeps proto names
    assert sandbox.sandbox.messages[0].code == "551177"


async def test_grpcurl_shows_the_status_of_an_invalid_request(server: SmsServer) -> None:
    request = json.dumps({"phone_number": "12", "code": "551177"})
    code, _stdout, stderr = await grpcurl(
        "-plaintext",
        "-d",
        request,
        f"127.0.0.1:{server.port}",
        "yunpian.sms.v1.SmsService/SendCode",
    )
    assert code != 0
    assert "InvalidArgument" in stderr

"""The SDK's get_delivery_status, both clients, through real gRPC to a server and its sandbox.

A message is PENDING until the sandbox's delivery report reaches the server (pulled by it, or
pushed to its report endpoint), then DELIVERED or FAILED with the carrier's words; each
refusal (MESSAGE_NOT_FOUND, DELIVERY_REPORTS_DISABLED, INVALID_MESSAGE_ID) raises its SmsError
class, and UNAVAILABLE is retried, as for every call that sends nothing.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any, Final

import grpc
import pytest
from support import (
    CLIENT_KINDS,
    Client,
    StartServer,
    log_events,
    make_config,
    push_delivery,
    rpcs,
    target_of,
    wait_until_not_serving,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_client import (
    DeliveryState,
    DeliveryStatus,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.config import Config
from yunpian_sms_server.sandbox import RunningSandbox

PHONE: Final = "13800138000"
# Pulled often, so that a report reaches the server soon after the sandbox has it ready.
PULL: Final = {"mode": "pull", "pull_interval_seconds": 0.05, "pull_lease_seconds": 5.0}
# The sandbox has each report ready this long after the send: long enough for a status asked
# right after sending to find none, short enough to wait for.
REPORT_DELAY_S: Final = 1.0
SETTLE_WITHIN_S: Final = 10.0
PUSH_TOKEN: Final = "delivery-push-token-0123456789abcdef"
UNSENT_ID: Final = "9007199254740993"
FAST_RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture
def config() -> Config:
    return make_config(delivery=PULL, verify={"enabled": True, "secret": "s" * 32})


@pytest.fixture(autouse=True)
def slow_reports(sandbox: RunningSandbox) -> None:
    sandbox.sandbox.configure_reports(delay_seconds=REPORT_DELAY_S)


def push_config(**sections: dict[str, Any]) -> Config:
    """Reports pushed by the sandbox to the server's report endpoint on a free loopback port."""
    return make_config(delivery=push_delivery(PUSH_TOKEN), **sections)


async def settled(sms: Client, message_id: str) -> DeliveryStatus:
    """The message's status once it is no longer PENDING (fails if it stays so)."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while True:
        status: DeliveryStatus = await sms.get_delivery_status(message_id)
        if status.state != DeliveryState.DELIVERY_STATE_PENDING:
            return status
        assert time.monotonic() < deadline, f"{message_id} still PENDING"
        await asyncio.sleep(0.05)


def seconds(timestamp: Any) -> float:
    return float(timestamp.ToNanoseconds()) / 1e9


# --- the states -------------------------------------------------------------------------------


async def test_a_sent_message_is_pending_then_delivered_once_its_report_is_pulled(
    sms: Client, sandbox: RunningSandbox
) -> None:
    before = time.time()
    sent = await sms.send_code(PHONE, "482913")
    pending = await sms.get_delivery_status(sent.message_id)

    assert isinstance(pending, DeliveryStatus)
    assert pending.message_id == sent.message_id
    assert pending.state == DeliveryState.DELIVERY_STATE_PENDING
    assert (pending.carrier_code, pending.carrier_detail) == ("", "")
    assert before - 1 <= seconds(pending.send_time) <= time.time()
    assert not pending.HasField("receive_time")

    delivered = await settled(sms, sent.message_id)

    assert delivered.state == DeliveryState.DELIVERY_STATE_DELIVERED
    assert (delivered.carrier_code, delivered.carrier_detail) == ("DELIVRD", "")
    assert delivered.send_time == pending.send_time
    # user_receive_time has whole seconds: at most one before the send itself.
    assert delivered.HasField("receive_time")
    assert seconds(delivered.receive_time) >= seconds(delivered.send_time) - 1
    assert sandbox.sandbox.report_stats.pulled == 1


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_pushed_report_delivers_the_message(
    start_server: StartServer, open_client: Any, sandbox: RunningSandbox, kind: str
) -> None:
    server = await start_server(push_config())
    sms = open_client(kind, target_of(server))
    sent = await sms.send_code(PHONE, "482913")

    pending = await sms.get_delivery_status(sent.message_id)
    delivered = await settled(sms, sent.message_id)

    assert pending.state == DeliveryState.DELIVERY_STATE_PENDING
    assert delivered.state == DeliveryState.DELIVERY_STATE_DELIVERED
    assert delivered.carrier_code == "DELIVRD"
    stats = sandbox.sandbox.report_stats
    assert (stats.push_successes, stats.pulls) == (1, 0)


async def test_a_failed_delivery_carries_the_carriers_code_and_explanation(
    sms: Client, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.configure_reports(
        delay_seconds=0.0, fail_mobiles=[PHONE], failure_codes=[("DB:0103", "用户关机")]
    )
    failing = await sms.send_code(PHONE, "482913")
    other = await sms.send_code("13900139000", "482913")

    failed = await settled(sms, failing.message_id)
    delivered = await settled(sms, other.message_id)

    assert failed.state == DeliveryState.DELIVERY_STATE_FAILED
    assert (failed.carrier_code, failed.carrier_detail) == ("DB:0103", "用户关机")
    assert delivered.state == DeliveryState.DELIVERY_STATE_DELIVERED


async def test_a_verifications_sms_has_its_status_and_the_verification_tells_it(
    sms: Client,
) -> None:
    started = await sms.start_verification(PHONE)

    assert started.delivery == DeliveryState.DELIVERY_STATE_PENDING
    assert (await sms.get_delivery_status(started.message_id)).state == (
        DeliveryState.DELIVERY_STATE_PENDING
    )
    delivered = await settled(sms, started.message_id)
    canceled = await sms.cancel_verification(started.verification_id)

    assert delivered.state == DeliveryState.DELIVERY_STATE_DELIVERED
    assert canceled.delivery == DeliveryState.DELIVERY_STATE_DELIVERED


# --- refusals ---------------------------------------------------------------------------------


async def test_a_message_id_nobody_sent_is_not_found(sms: Client) -> None:
    with pytest.raises(NotFoundError) as refused:
        await sms.get_delivery_status(UNSENT_ID)

    error = refused.value
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert (error.reason, error.domain) == ("MESSAGE_NOT_FOUND", "yunpian.sms.v1")
    assert not error.retryable


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_another_callers_message_is_not_found(
    start_server: StartServer, open_client: Any, kind: str
) -> None:
    tokens = {"checkout": "checkout-token-0123456789", "ops": "ops-token-0123456789"}
    callers = {name: {"token_sha256": hash_token(token)} for name, token in tokens.items()}
    server = await start_server(make_config(delivery=PULL, auth={"callers": callers}))
    checkout, ops = (
        open_client(kind, target_of(server), metadata=[("authorization", f"Bearer {token}")])
        for token in tokens.values()
    )
    sent = await checkout.send_code(PHONE, "482913")

    with pytest.raises(NotFoundError) as refused:
        await ops.get_delivery_status(sent.message_id)
    own = await checkout.get_delivery_status(sent.message_id)

    assert refused.value.reason == "MESSAGE_NOT_FOUND"
    assert own.state == DeliveryState.DELIVERY_STATE_PENDING


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_server_without_delivery_reports_refuses_as_disabled(
    start_server: StartServer, open_client: Any, kind: str
) -> None:
    server = await start_server(make_config(verify={"enabled": True, "secret": "s" * 32}))
    sms = open_client(kind, target_of(server))
    sent = await sms.send_code(PHONE, "482913")
    started = await sms.start_verification("13900139000")

    for message_id in (sent.message_id, UNSENT_ID):
        with pytest.raises(FailedPreconditionError) as refused:
            await sms.get_delivery_status(message_id)
        assert refused.value.reason == "DELIVERY_REPORTS_DISABLED"
        assert not refused.value.retryable
    # Nor does a verification tell a delivery state.
    assert started.delivery == DeliveryState.DELIVERY_STATE_UNSPECIFIED


@pytest.mark.parametrize(
    "message_id", ["", "abc", "12a4", "-1", "1" * 21, "１２３", "123 "], ids=repr
)
async def test_a_message_id_that_is_not_a_decimal_sid_is_invalid_argument(
    sms: Client, message_id: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await sms.get_delivery_status(message_id)

    assert refused.value.reason == "INVALID_MESSAGE_ID"
    assert [field for field, _ in refused.value.field_violations] == ["message_id"]


# --- the call ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_get_delivery_status_sends_the_client_and_the_call_metadata(
    server: SmsServer, open_client: Any, log_output: io.StringIO, kind: str
) -> None:
    # The server names each RPC's event after the caller's x-request-id metadata.
    target = target_of(server)
    sms = open_client(kind, target)
    tagged = open_client(kind, target, metadata=[("x-request-id", "rq-client")])

    with pytest.raises(NotFoundError):
        await sms.get_delivery_status(UNSENT_ID, metadata=[("x-request-id", "rq-status")])
    with pytest.raises(NotFoundError):
        await tagged.get_delivery_status(UNSENT_ID)

    events = log_events(log_output, "rpc")
    assert [(event["rpc"], event["request_id"]) for event in events] == [
        ("GetDeliveryStatus", "rq-status"),
        ("GetDeliveryStatus", "rq-client"),
    ]
    assert [event["message_id"] for event in events] == [UNSENT_ID, UNSENT_ID]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_unavailable_is_retried_since_a_status_changes_nothing(
    start_server: StartServer, open_client: Any, kind: str
) -> None:
    # While it drains, the server refuses every call with UNAVAILABLE SHUTTING_DOWN (it did
    # nothing) and counts each attempt it refused.
    server = await start_server(make_config(delivery=PULL, server={"drain_seconds": 1.0}))
    target = target_of(server)
    sms = open_client(kind, target, retry=FAST_RETRY)
    once = open_client(kind, target, retry=None)
    stopping = asyncio.create_task(server.stop())
    await wait_until_not_serving(target)

    with pytest.raises(UnavailableError) as retried:
        await sms.get_delivery_status(UNSENT_ID)
    attempts = rpcs(server, "GetDeliveryStatus", "UNAVAILABLE")
    with pytest.raises(UnavailableError):
        await once.get_delivery_status(UNSENT_ID)

    assert retried.value.reason == "SHUTTING_DOWN"
    assert attempts == FAST_RETRY.max_attempts
    assert rpcs(server, "GetDeliveryStatus", "UNAVAILABLE") == attempts + 1
    assert not stopping.done()  # every attempt fell within the drain
    await stopping


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_closed_client_refuses_get_delivery_status(
    server: SmsServer, open_client: Any, kind: str
) -> None:
    sms = open_client(kind, target_of(server))
    await sms.close()

    with pytest.raises(RuntimeError, match="closed"):
        await sms.get_delivery_status(UNSENT_ID)
    assert rpcs(server, "GetDeliveryStatus", "NOT_FOUND") == 0


def test_the_sdk_answers_with_the_contracts_own_messages() -> None:
    assert DeliveryStatus is pb.DeliveryStatus
    assert DeliveryState is pb.DeliveryState

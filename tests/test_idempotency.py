"""Idempotent SendCode end to end on the in-memory store, and how replays and refusals meet
the rate limits."""

from __future__ import annotations

import asyncio

import pytest
from support import StartServer, client_for, single_sends

from yunpian_sms_client import (
    AsyncSmsClient,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnknownError,
)
from yunpian_sms_server.sandbox import Fault, RunningSandbox

PHONE = "13800138000"


async def test_a_retried_request_id_replays_the_outcome_and_sends_nothing(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    first = await client.send_code(PHONE, "123456", request_id="signin-1")
    again = await client.send_code("+86 138 0013 8000", "123456", request_id="signin-1")
    assert not first.replayed
    assert again.replayed
    assert again.message_id == first.message_id
    assert len(sandbox.sandbox.messages) == 1


async def test_a_request_id_reused_for_another_request_is_refused(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code(PHONE, "123456", request_id="signin-2")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.send_code(PHONE, "654321", request_id="signin-2")
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert len(sandbox.sandbox.messages) == 1


async def test_concurrent_duplicates_wait_for_the_first_and_send_once(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.3))
    answers = await asyncio.gather(
        *(client.send_code(PHONE, "123456", request_id="burst") for _ in range(10))
    )
    assert len(sandbox.sandbox.messages) == 1
    assert {answer.message_id for answer in answers} == {answers[0].message_id}
    assert sum(not answer.replayed for answer in answers) == 1


async def test_outcomes_that_sent_nothing_are_not_stored(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=22))
    with pytest.raises(ResourceExhaustedError):
        await client.send_code(PHONE, "123456", request_id="retry-me")
    sent = await client.send_code(PHONE, "123456", request_id="retry-me")
    assert not sent.replayed
    assert len(sandbox.sandbox.messages) == 1


async def test_an_unknown_delivery_is_stored_and_replayed_as_the_same_error(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="drop"))
    with pytest.raises(UnknownError) as first:
        await client.send_code(PHONE, "123456", request_id="maybe-sent")
    with pytest.raises(UnknownError) as again:
        await client.send_code(PHONE, "123456", request_id="maybe-sent")
    assert first.value.reason == again.value.reason == "PROVIDER_CONNECTION_LOST"
    assert again.value.delivery_unknown
    assert again.value.metadata["replayed"] == "true"
    assert single_sends(sandbox) == 1


async def test_records_expire_after_the_ttl(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.enforce_limits = False  # YunPian's own 1-per-30-s rule is not under test
    client = await client_for(start_server, store={"idempotency_ttl_seconds": 0.2})
    async with client:
        await client.send_code(PHONE, "123456", request_id="short-lived")
        await asyncio.sleep(0.3)
        again = await client.send_code(PHONE, "123456", request_id="short-lived")
    assert not again.replayed
    assert len(sandbox.sandbox.messages) == 2


async def test_a_send_that_yunpian_refused_gives_its_slot_back(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    client = await client_for(start_server, limits={"per_phone": ["1/60s"]})
    sandbox.sandbox.inject(Fault(kind="http_status", status=503))
    async with client:
        with pytest.raises(Exception, match="PROVIDER_UNAVAILABLE"):
            await client.send_code(PHONE, "123456")
        sent = await client.send_code(PHONE, "123456")
    assert sent.message_id


async def test_a_replay_does_not_count_against_the_limits(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    client = await client_for(start_server, limits={"per_phone": ["1/60s"]})
    async with client:
        await client.send_code(PHONE, "123456", request_id="once")
        replay = await client.send_code(PHONE, "123456", request_id="once")
    assert replay.replayed

"""Never twice, whatever happens: a property of the whole send protocol (hypothesis).

Each example plays a random timeline against a real server: calls with and without request_ids
(duplicates among them), started at random moments, some cancelled by their client at random
moments, YunPian (the sandbox) slow, refusing or dropping the connection, and the Redis store
failing part or all of its commands for a while (the `faulty_redis` fixture: real errors, data
kept). Then, for every request_id:

* YunPian received at most one SMS for it (each request_id has a phone number of its own), and
  all SMS together are at most the distinct request_ids plus the calls without one;
* it never replays an outcome other than its first: every replay equals every other, equals the
  fresh outcome when one was seen, and a replayed message_id is the SMS YunPian accepted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import (
    FINGERPRINT_SECRET,
    STORE_FAULTS,
    RedisServer,
    StartServer,
    make_config,
    set_store,
)

from yunpian_sms_client import AsyncSmsClient, SendCodeResponse, SmsError
from yunpian_sms_server.sandbox import Fault, RunningSandbox

CODE: Final = "123456"
EXAMPLES: Final = 15
SETTINGS: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CALL_TIMEOUT_S: Final = 3.0
# The longest YunPian delay an example injects: its SMS is in the sandbox after this.
MAX_UPSTREAM_DELAY_S: Final = 0.25
# Delays most often: a slow YunPian is when duplicates overlap and cancellations strike.
UPSTREAMS: Final = ("ok", "delay", "delay", "delay", "error", "drop", "unavailable")


@dataclass(frozen=True)
class Call:
    request: int | None  # which of the example's request_ids; None: a call without one
    start_after_s: float
    cancel_after_s: float | None  # the client gives up then; None: it waits for the answer


@dataclass(frozen=True)
class StoreFault:
    at_s: float
    kind: str  # a key of STORE_FAULTS, or "healthy"


CALLS: Final = st.builds(
    Call,
    request=st.sampled_from([0, 0, 0, 1, 1, 2, 3, None]),  # duplicates above all
    start_after_s=st.floats(0.0, 0.15),
    cancel_after_s=st.one_of(st.none(), st.floats(0.0, 0.3)),
)
STORE_KINDS: Final = st.sampled_from(["healthy", *STORE_FAULTS])
STORE_FAULT_TIMELINES: Final = st.lists(
    st.builds(StoreFault, at_s=st.floats(0.0, 0.3), kind=STORE_KINDS), max_size=3
)
_numbers = itertools.count()


def phone_numbers() -> Iterator[str]:
    """Numbers no other example uses: YunPian's count per number is the count per request."""
    while True:
        yield f"139{next(_numbers):08d}"


def upstream_fault(behaviour: str, mobile: str, delay_s: float) -> Fault | None:
    """How YunPian treats the first request for a number: nothing sent, or maybe sent."""
    if behaviour == "delay":
        return Fault(kind="delay", seconds=delay_s, mobile=mobile)
    if behaviour == "error":
        return Fault(kind="error", code=22, mobile=mobile)  # a refusal: nothing sent
    if behaviour == "drop":
        return Fault(kind="drop", mobile=mobile)  # read, never answered: maybe sent
    if behaviour == "unavailable":
        return Fault(kind="http_status", status=503, mobile=mobile)
    return None


Observed = tuple[str, str]


def observe(answer: object) -> Observed | None:
    """An answer as (kind, what): ("sent", id), ("maybe", reason), ("replay", id or reason).

    None for a refusal (nothing sent, nothing recorded) or a call its client cancelled.
    """
    if isinstance(answer, SendCodeResponse):
        return ("replay", answer.message_id) if answer.replayed else ("sent", answer.message_id)
    if isinstance(answer, SmsError):
        if answer.metadata.get("replayed") == "true":
            return ("replay", answer.reason or "")
        if answer.delivery_unknown:
            return ("maybe", answer.reason or "")
    return None


@pytest.fixture(params=["redis-deny", "redis-allow", "memory"])
async def protocol_server(
    request: pytest.FixtureRequest,
    start_server: StartServer,
    sandbox: RunningSandbox,
    faulty_redis: RedisServer,
) -> AsyncIterator[tuple[AsyncSmsClient, bool]]:
    """A client of a server on the faulty Redis (deny or allow) or on memory; whether faults
    apply to its store."""
    sandbox.sandbox.enforce_limits = False
    store: dict[str, Any] = {"url": "memory://"}
    if request.param.startswith("redis"):
        store = {
            "url": faulty_redis.url,
            "on_error": request.param.removeprefix("redis-"),
            "fingerprint_secret": FINGERPRINT_SECRET,
        }
    config = make_config(
        yunpian={"api_key": "0123456789abcdef0123456789abcdef", "timeout_seconds": 1.0},
        # A limit no example reaches: the count step runs (and can fail) on every send.
        limits={"per_phone": ["1000/1h"]},
        store=store,
    )
    server = await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", retry=None) as client:
        yield client, request.param.startswith("redis")


@SETTINGS
@given(
    calls=st.lists(CALLS, min_size=1, max_size=8),
    upstreams=st.lists(st.sampled_from(UPSTREAMS), min_size=4, max_size=4),
    delay_s=st.floats(0.05, MAX_UPSTREAM_DELAY_S),
    store_at_start=STORE_KINDS,
    store_faults=STORE_FAULT_TIMELINES,
)
# Always tried: duplicates overlapping while the store is down (under "allow" each would send
# unless this server coalesced them and remembered the outcome)...
@example(
    calls=[Call(0, 0.0, None), Call(0, 0.02, None), Call(0, 0.2, None)],
    upstreams=["delay", "ok", "ok", "ok"],
    delay_s=0.1,
    store_at_start="down",
    store_faults=[],
)
# ...and a call cancelled while YunPian handles it, retried (the record must say "maybe sent").
@example(
    calls=[Call(0, 0.0, 0.05)],
    upstreams=["delay", "ok", "ok", "ok"],
    delay_s=0.2,
    store_at_start="healthy",
    store_faults=[],
)
async def test_no_request_id_ever_sends_twice_or_replays_another_outcome(
    protocol_server: tuple[AsyncSmsClient, bool],
    sandbox: RunningSandbox,
    redis_admin: aioredis.Redis,
    calls: list[Call],
    upstreams: list[str],
    delay_s: float,
    store_at_start: str,
    store_faults: list[StoreFault],
) -> None:
    client, faults_apply = protocol_server
    if faults_apply:
        await set_store(redis_admin, store_at_start)
    numbers = phone_numbers()
    example = next(numbers)
    # Each request_id: its own number; each call without one: its own number too.
    request_phones = [next(numbers) for _ in range(4)]
    for phone, behaviour in zip(request_phones, upstreams, strict=True):
        fault = upstream_fault(behaviour, phone, delay_s)
        if fault is not None:
            sandbox.sandbox.inject(fault)

    def request_of(call: Call) -> tuple[str, str | None]:
        if call.request is None:
            return next(numbers), None
        return request_phones[call.request], f"{example}-{call.request}"

    async def make(call: Call) -> tuple[int | None, object]:
        phone, request_id = request_of(call)
        await asyncio.sleep(call.start_after_s)
        sending = asyncio.ensure_future(
            client.send_code(phone, CODE, request_id=request_id, timeout=CALL_TIMEOUT_S)
        )
        if call.cancel_after_s is not None:
            await asyncio.wait({sending}, timeout=call.cancel_after_s)
            sending.cancel()
        try:
            return call.request, await sending
        except asyncio.CancelledError:
            return call.request, None
        except SmsError as error:
            return call.request, error

    async def break_the_store() -> None:
        elapsed = 0.0
        for fault in sorted(store_faults, key=lambda fault: fault.at_s):
            await asyncio.sleep(fault.at_s - elapsed)
            elapsed = fault.at_s
            if faults_apply:
                await set_store(redis_admin, fault.kind)

    answers = await asyncio.gather(*(make(call) for call in calls), break_the_store())
    await set_store(redis_admin, "healthy")
    await asyncio.sleep(MAX_UPSTREAM_DELAY_S + 0.1)  # what YunPian was still doing is done
    # Every request_id asked once more, the store healthy: it replays, or is judged afresh.
    used = sorted({call.request for call in calls if call.request is not None})
    finals = await asyncio.gather(*(make(Call(request, 0.0, None)) for request in used))

    observed: dict[int, list[Observed]] = {request: [] for request in used}
    for request, answer in [*answers[:-1], *finals]:
        seen = observe(answer)
        if request is not None and seen is not None:
            observed[request].append(seen)
    without_request_id = sum(call.request is None for call in calls)
    messages = {phone: sandbox.sandbox.messages_to(phone) for phone in request_phones}
    assert sum(map(len, messages.values())) <= len(used) + without_request_id
    for request in used:
        sent = messages[request_phones[request]]
        assert len(sent) <= 1, f"request_id {request} sent {len(sent)} SMS: {observed[request]}"
        fresh = [seen for seen in observed[request] if seen[0] != "replay"]
        replays = {what for kind, what in observed[request] if kind == "replay"}
        assert len(fresh) <= 1, f"request_id {request} was sent twice: {observed[request]}"
        assert len(replays) <= 1, f"request_id {request} replayed two outcomes: {replays}"
        if fresh and replays:
            assert replays == {fresh[0][1]}, observed[request]
        for what in replays | {what for kind, what in fresh if kind == "sent"}:
            if what.isdigit():  # a message_id: the SMS YunPian accepted
                assert [str(message.sid) for message in sent] == [what], observed[request]

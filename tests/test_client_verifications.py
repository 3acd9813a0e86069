"""The SDK's verification calls, both clients, through real gRPC to a server and its sandbox.

start_verification, check_verification and cancel_verification return the generated messages,
raise each verification reason as its SmsError class, and retry UNAVAILABLE only where the
SDK's policy allows: proven against a draining server, which counts every attempt, and a port
whose server comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from support import (
    CLIENT_KINDS,
    Client,
    StartServer,
    eventually,
    free_port,
    fresh_database,
    log_events,
    make_config,
    rpcs,
    target_of,
    wait_until_not_serving,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import (
    CallCancelledError,
    CheckVerificationResponse,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    SmsError,
    UnavailableError,
    Verification,
    VerificationStatus,
    from_rpc_error,
    new_request_id,
)
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.config import Config
from yunpian_sms_server.sandbox import SINGLE_SEND_PATH, Fault, RunningSandbox

SECRET = "verification-test-secret-0123456789abcdef"
MAX_CHECKS = 3
MAX_SENDS = 2
CODE_TTL_S = 600.0
VERIFY = {
    "enabled": True,
    "secret": SECRET,
    "max_checks": MAX_CHECKS,
    "max_sends": MAX_SENDS,
    "code_ttl_seconds": CODE_TTL_S,
}
PHONE = "13800138000"
UNKNOWN_ID = "vf_" + "A" * 32
# Quick retries, so that a call's attempts all fall within a short drain.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture
def config() -> Config:
    return make_config(verify=VERIFY)


@pytest.fixture(autouse=True)
def no_yunpian_limits(sandbox: RunningSandbox) -> None:
    # YunPian's own 1-per-30-s rule per number would refuse every resend: not under test here.
    sandbox.sandbox.enforce_limits = False


def all_rpcs(server: SmsServer) -> int:
    """Every SmsService call the server answered, whatever its method and code."""
    return int(
        sum(
            sample.value
            for family in server.metrics.registry.collect()
            if family.name == "yunpian_sms_rpcs"
            for sample in family.samples
            if sample.name == "yunpian_sms_rpcs_total"
        )
    )


async def start_with_code(
    sms: Client, sandbox: RunningSandbox, phone: str = PHONE, **options: Any
) -> tuple[Verification, str]:
    """Starts a verification of `phone`; returns it and the code the sandbox delivered."""
    started = await sms.start_verification(phone, **options)
    code = sandbox.sandbox.last_code(phone)
    assert code is not None
    return started, code


# --- the flow ---------------------------------------------------------------------------------


async def test_start_returns_the_pending_verification_and_the_sms_carries_its_code(
    sms: Client, sandbox: RunningSandbox
) -> None:
    before = time.time()
    started = await sms.start_verification(PHONE, usage_type="SignIn")

    assert isinstance(started, Verification)
    assert started.verification_id.startswith("vf_")
    assert started.phone_number == PHONE
    assert started.usage_type == pb.USAGE_TYPE_SIGN_IN
    assert started.status == VerificationStatus.VERIFICATION_STATUS_PENDING
    assert started.send_count == 1
    assert started.checks_remaining == MAX_CHECKS
    assert not started.replayed
    expires = started.expire_time.ToNanoseconds() / 1e9
    assert before + CODE_TTL_S <= expires <= time.time() + CODE_TTL_S
    [message] = sandbox.sandbox.messages
    assert started.message_id == str(message.sid)
    assert message.code is not None
    assert len(message.code) == 6
    assert message.code.isdigit()
    assert f"您的登录验证码是{message.code}" in message.text  # the SignIn template


async def test_the_right_code_approves_the_verification_once(
    sms: Client, sandbox: RunningSandbox
) -> None:
    started, code = await start_with_code(sms, sandbox)

    checked = await sms.check_verification(code, verification_id=started.verification_id)

    assert isinstance(checked, CheckVerificationResponse)
    assert checked.approved
    assert checked.verification.verification_id == started.verification_id
    assert checked.verification.status == VerificationStatus.VERIFICATION_STATUS_APPROVED
    assert checked.verification.checks_remaining == MAX_CHECKS - 1
    with pytest.raises(FailedPreconditionError) as again:
        await sms.check_verification(code, verification_id=started.verification_id)
    assert again.value.reason == "VERIFICATION_APPROVED"
    assert again.value.metadata["verification_id"] == started.verification_id
    assert again.value.metadata["status"] == "APPROVED"


@pytest.mark.parametrize(
    "usage_type", ["Register", "USAGE_TYPE_REGISTER", pb.USAGE_TYPE_REGISTER], ids=str
)
async def test_a_check_by_phone_number_finds_the_pending_verification_of_its_usage_type(
    sms: Client, sandbox: RunningSandbox, usage_type: Any
) -> None:
    started = await sms.start_verification("+86 138-0013-8000", usage_type=usage_type)
    assert started.usage_type == pb.USAGE_TYPE_REGISTER
    code = sandbox.sandbox.last_code(PHONE)
    assert code is not None

    with pytest.raises(NotFoundError) as other_usage:
        await sms.check_verification(code, phone_number=PHONE)  # Generic: none pending
    checked = await sms.check_verification(code, phone_number=PHONE, usage_type=usage_type)

    assert other_usage.value.reason == "VERIFICATION_NOT_FOUND"
    assert other_usage.value.code is grpc.StatusCode.NOT_FOUND
    assert checked.approved
    assert checked.verification.verification_id == started.verification_id


async def test_a_wrong_code_is_an_answer_until_the_checks_run_out(
    sms: Client, sandbox: RunningSandbox
) -> None:
    started, code = await start_with_code(sms, sandbox)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    answers = [
        await sms.check_verification(wrong, verification_id=started.verification_id)
        for _ in range(MAX_CHECKS)
    ]

    assert [answer.approved for answer in answers] == [False] * MAX_CHECKS
    assert [answer.verification.checks_remaining for answer in answers] == [2, 1, 0]
    assert [answer.verification.status for answer in answers] == [
        VerificationStatus.VERIFICATION_STATUS_PENDING,
        VerificationStatus.VERIFICATION_STATUS_PENDING,
        VerificationStatus.VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED,
    ]
    with pytest.raises(FailedPreconditionError) as spent:
        await sms.check_verification(code, verification_id=started.verification_id)
    assert spent.value.reason == "VERIFICATION_MAX_ATTEMPTS"


async def test_a_second_start_resends_and_every_code_sent_stays_valid(
    sms: Client, sandbox: RunningSandbox
) -> None:
    first = await sms.start_verification(PHONE, usage_type="SignIn")
    first_code = sandbox.sandbox.last_code(PHONE)
    resent = await sms.start_verification(PHONE, usage_type="SignIn")

    assert resent.verification_id == first.verification_id
    assert resent.send_count == 2
    assert resent.expire_time == first.expire_time
    assert len(sandbox.sandbox.messages) == 2
    assert first_code is not None
    checked = await sms.check_verification(first_code, verification_id=first.verification_id)
    assert checked.approved


async def test_starting_past_max_sends_is_resource_exhausted_until_it_expires(
    sms: Client,
) -> None:
    for _ in range(MAX_SENDS):
        started = await sms.start_verification(PHONE)

    with pytest.raises(ResourceExhaustedError) as refused:
        await sms.start_verification(PHONE)

    error = refused.value
    assert error.reason == "VERIFICATION_SEND_LIMIT"
    assert error.metadata["verification_id"] == started.verification_id
    assert error.retry_delay is not None
    assert CODE_TTL_S - 30 < error.retry_delay <= CODE_TTL_S
    assert not error.retryable


async def test_a_start_with_a_request_id_is_answered_again_without_a_second_sms(
    sms: Client, sandbox: RunningSandbox
) -> None:
    request_id = new_request_id()
    first = await sms.start_verification(PHONE, request_id=request_id)
    again = await sms.start_verification(PHONE, request_id=request_id)

    assert again.verification_id == first.verification_id
    assert again.replayed
    assert again.send_count == 1
    assert len(sandbox.sandbox.messages) == 1


async def test_idempotent_starts_carry_a_fresh_request_id_each(
    sms: Client, sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    first = await sms.start_verification(PHONE, idempotent=True)
    second = await sms.start_verification(PHONE, idempotent=True)

    # Two logical starts: the second is a resend, not a replay of the first.
    assert (first.send_count, second.send_count) == (1, 2)
    assert not second.replayed
    keys = [event["idempotency_key"] for event in log_events(log_output, "rpc")]
    assert len(keys) == 2
    assert all(key and len(key) == 32 for key in keys)
    assert keys[0] != keys[1]


async def test_cancel_ends_a_pending_verification_and_leaves_an_ended_one_as_it_is(
    sms: Client, sandbox: RunningSandbox
) -> None:
    started, code = await start_with_code(sms, sandbox)

    canceled = await sms.cancel_verification(started.verification_id)
    again = await sms.cancel_verification(started.verification_id)

    assert isinstance(canceled, Verification)
    assert canceled.status == VerificationStatus.VERIFICATION_STATUS_CANCELED
    assert again == canceled
    with pytest.raises(FailedPreconditionError) as refused:
        await sms.check_verification(code, verification_id=started.verification_id)
    assert refused.value.reason == "VERIFICATION_CANCELED"


async def test_a_check_after_the_codes_expire_is_verification_expired(
    start_server: StartServer, open_client: Any, sandbox: RunningSandbox
) -> None:
    server = await start_server(make_config(verify={**VERIFY, "code_ttl_seconds": 0.5}))
    for kind in CLIENT_KINDS:
        sms = open_client(kind, target_of(server))
        started, code = await start_with_code(sms, sandbox, usage_type="SignIn")
        await asyncio.sleep(0.6)

        with pytest.raises(FailedPreconditionError) as expired:
            await sms.check_verification(code, verification_id=started.verification_id)

        assert expired.value.reason == "VERIFICATION_EXPIRED"
        assert expired.value.metadata["status"] == "EXPIRED"


# --- refusals ---------------------------------------------------------------------------------


async def test_an_unknown_verification_is_not_found(sms: Client) -> None:
    with pytest.raises(NotFoundError) as checked:
        await sms.check_verification("123456", verification_id=UNKNOWN_ID)
    with pytest.raises(NotFoundError) as canceled:
        await sms.cancel_verification(UNKNOWN_ID)
    with pytest.raises(NotFoundError) as by_number:
        await sms.check_verification("123456", phone_number=PHONE, usage_type="SignIn")

    for error in (checked.value, canceled.value, by_number.value):
        assert error.reason == "VERIFICATION_NOT_FOUND"
        assert error.domain == "yunpian.sms.v1"
        assert not error.retryable


@pytest.mark.parametrize("verification_id", ["not-an-id", "", "vf_" + "A" * 80, "vf_a b"])
async def test_a_malformed_verification_id_is_invalid_argument(
    sms: Client, verification_id: str
) -> None:
    with pytest.raises(InvalidArgumentError) as checked:
        await sms.check_verification("123456", verification_id=verification_id)
    with pytest.raises(InvalidArgumentError) as canceled:
        await sms.cancel_verification(verification_id)

    for error in (checked.value, canceled.value):
        assert error.reason == "INVALID_VERIFICATION_ID"
        assert [field for field, _ in error.field_violations] == ["verification_id"]


@pytest.mark.parametrize("code", ["12345", "1234567", "12345a", "", "１２３４５６"])
async def test_a_code_that_is_not_six_digits_is_invalid_and_uses_no_check(
    sms: Client, sandbox: RunningSandbox, code: str
) -> None:
    started = await sms.start_verification(PHONE)

    with pytest.raises(InvalidArgumentError) as by_id:
        await sms.check_verification(code, verification_id=started.verification_id)
    with pytest.raises(InvalidArgumentError) as by_number:
        await sms.check_verification(code, phone_number=PHONE)

    for error in (by_id.value, by_number.value):
        assert error.reason == "INVALID_CODE"
        assert error.field_violations == (("code", "The code must be 6 digits."),)
    right = sandbox.sandbox.last_code(PHONE)
    assert right is not None
    checked = await sms.check_verification(right, verification_id=started.verification_id)
    assert checked.verification.checks_remaining == MAX_CHECKS - 1


async def test_a_start_to_a_bad_number_is_invalid_argument_and_sends_nothing(
    sms: Client, sandbox: RunningSandbox
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await sms.start_verification("12345")

    assert refused.value.reason == "INVALID_PHONE_NUMBER"
    assert sandbox.sandbox.messages == []


async def test_a_check_naming_no_verification_is_invalid_verification_target(
    server: SmsServer,
) -> None:
    # The SDK never sends one (it raises ValueError first): a raw stub does, and
    # from_rpc_error reads the refusal into the same error tree.
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.CheckVerification(pb.CheckVerificationRequest(code="123456"))

    error = from_rpc_error(raw.value)
    assert type(error) is InvalidArgumentError
    assert error.reason == "INVALID_VERIFICATION_TARGET"
    assert [field for field, _ in error.field_violations] == ["target"]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_server_without_verifications_refuses_every_call_as_disabled(
    start_server: StartServer, open_client: Any, sandbox: RunningSandbox, kind: str
) -> None:
    server = await start_server(make_config())  # [verify] enabled = false, the default
    sms = open_client(kind, target_of(server))
    calls = [
        sms.start_verification(PHONE),
        sms.check_verification("123456", verification_id=UNKNOWN_ID),
        sms.check_verification("123456", phone_number=PHONE),
        sms.cancel_verification(UNKNOWN_ID),
    ]

    for call in calls:
        with pytest.raises(FailedPreconditionError) as refused:
            await call
        assert refused.value.reason == "VERIFICATION_DISABLED"
    assert sandbox.sandbox.messages == []


async def test_a_start_past_its_deadline_may_have_sent(
    sms: Client, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="delay", seconds=1.0))

    with pytest.raises(SmsError) as late:
        await sms.start_verification(PHONE, timeout=0.3)

    assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.value.delivery_unknown  # a start is a send: retry only with a request_id


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_start_cut_off_by_closing_the_client_may_have_sent(
    server: SmsServer, sandbox: RunningSandbox, open_client: Any, kind: str
) -> None:
    # No answer from the server at all: the SDK itself must say that an SMS may be on its way.
    sandbox.sandbox.inject(Fault(kind="delay", seconds=1.0))
    sms = open_client(kind, target_of(server))
    start = asyncio.create_task(sms.start_verification(PHONE))
    await eventually(lambda: sandbox.sandbox.request_counts[SINGLE_SEND_PATH] == 1)

    await sms.close()

    with pytest.raises(CallCancelledError) as cut:
        await start
    assert cut.value.delivery_unknown
    assert not cut.value.retryable


# --- arguments the SDK refuses before calling -------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"verification_id": UNKNOWN_ID, "phone_number": PHONE},
        {"verification_id": UNKNOWN_ID, "usage_type": "SignIn"},
        {"verification_id": UNKNOWN_ID, "usage_type": pb.USAGE_TYPE_GENERIC},
        {"phone_number": PHONE, "usage_type": "signin"},
    ],
)
async def test_check_verification_refuses_a_target_that_is_not_exactly_one(
    sms: Client, server: SmsServer, arguments: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=r"exactly one|usage_type goes with|Unknown usage type"):
        await sms.check_verification("123456", **arguments)

    assert all_rpcs(server) == 0


async def test_start_verification_refuses_unknown_usage_types_before_calling(
    sms: Client, server: SmsServer
) -> None:
    with pytest.raises(ValueError, match="Unknown usage type"):
        await sms.start_verification(PHONE, usage_type="Login")
    with pytest.raises(TypeError):
        await sms.start_verification(PHONE, usage_type=True)

    assert all_rpcs(server) == 0


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_verification_calls_send_the_client_and_the_call_metadata(
    server: SmsServer, open_client: Any, log_output: io.StringIO, kind: str
) -> None:
    # The server names each RPC's event after the caller's x-request-id metadata.
    target = target_of(server)
    sms = open_client(kind, target)
    tagged = open_client(kind, target, metadata=[("x-request-id", "rq-client")])
    started = await sms.start_verification(PHONE, metadata=[("x-request-id", "rq-start")])
    await sms.check_verification(
        "000000", verification_id=started.verification_id, metadata=[("x-request-id", "rq-check")]
    )
    await tagged.check_verification("000000", verification_id=started.verification_id)
    await sms.cancel_verification(started.verification_id, metadata=[("x-request-id", "rq-cancel")])

    events = log_events(log_output, "rpc")
    assert [(event["rpc"], event["request_id"]) for event in events] == [
        ("StartVerification", "rq-start"),
        ("CheckVerification", "rq-check"),
        ("CheckVerification", "rq-client"),
        ("CancelVerification", "rq-cancel"),
    ]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_closed_client_refuses_verification_calls(
    server: SmsServer, open_client: Any, kind: str
) -> None:
    sms = open_client(kind, target_of(server))
    await sms.close()

    for call in (
        sms.start_verification(PHONE),
        sms.check_verification("123456", verification_id=UNKNOWN_ID),
        sms.cancel_verification(UNKNOWN_ID),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            await call
    assert all_rpcs(server) == 0


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_unavailable_is_retried_except_for_a_start_without_a_request_id(
    start_server: StartServer, open_client: Any, kind: str
) -> None:
    # While it drains, the server refuses every call with UNAVAILABLE SHUTTING_DOWN (it did
    # nothing) and counts each attempt it refused.
    server = await start_server(make_config(verify=VERIFY, server={"drain_seconds": 1.0}))
    target = target_of(server)
    sms = open_client(kind, target, retry=FAST_RETRY)
    stopping = asyncio.create_task(server.stop())
    await wait_until_not_serving(target)

    calls: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
        ("StartVerification", lambda: sms.start_verification(PHONE), 1),
        ("StartVerification", lambda: sms.start_verification(PHONE, request_id="r-1"), 3),
        ("StartVerification", lambda: sms.start_verification(PHONE, idempotent=True), 3),
        ("CheckVerification", lambda: sms.check_verification("1", verification_id="x"), 3),
        ("CheckVerification", lambda: sms.check_verification("1", phone_number=PHONE), 3),
        ("CancelVerification", lambda: sms.cancel_verification(UNKNOWN_ID), 3),
    ]
    for method, call, attempts in calls:
        before = rpcs(server, method, "UNAVAILABLE")
        with pytest.raises(UnavailableError) as refused:
            await call()
        assert refused.value.reason == "SHUTTING_DOWN"
        assert rpcs(server, method, "UNAVAILABLE") - before == attempts, method
    assert not stopping.done()  # every attempt fell within the drain
    await stopping


@pytest.fixture
async def shared_store_config(redis_server: Any) -> Config:
    """A verifying config whose state outlives a server: Redis, database 11."""
    url = await fresh_database(redis_server, 11)
    return make_config(verify=VERIFY, store={"url": url, "fingerprint_secret": SECRET})


# Reconnect at once when the server comes back, and retry often enough to see it.
QUICK_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]
PATIENT_RETRY = RetryPolicy(max_attempts=100, initial_backoff_s=0.05, max_backoff_s=0.1)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_check_and_cancel_are_retried_until_the_server_is_back(
    shared_store_config: Config,
    sandbox: RunningSandbox,
    open_client: Any,
    kind: str,
) -> None:
    config = dataclasses.replace(
        shared_store_config,
        yunpian=dataclasses.replace(shared_store_config.yunpian, base_url=sandbox.url),
    )
    first = SmsServer(config)
    await first.start(listen="127.0.0.1:0")
    port = first.port
    target = f"127.0.0.1:{port}"
    sms = open_client(kind, target, retry=PATIENT_RETRY, options=QUICK_RECONNECT)
    try:
        started = await sms.start_verification(PHONE)
        other = await sms.start_verification("13900139000")
    finally:
        await first.stop()
    code = sandbox.sandbox.last_code(PHONE)
    assert code is not None

    # Nothing listens on the port for the next half second: every attempt made meanwhile
    # fails with UNAVAILABLE; only a retry after it is back can succeed.
    check = asyncio.create_task(
        sms.check_verification(code, verification_id=started.verification_id, timeout=10.0)
    )
    cancel = asyncio.create_task(sms.cancel_verification(other.verification_id, timeout=10.0))
    await asyncio.sleep(0.5)
    second = SmsServer(config)
    await second.start(listen=target)
    try:
        checked, canceled = await asyncio.wait_for(asyncio.gather(check, cancel), 10.0)
    finally:
        await second.stop()

    assert checked.approved
    assert canceled.status == VerificationStatus.VERIFICATION_STATUS_CANCELED


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_start_without_a_request_id_is_not_retried_while_the_server_is_away(
    sandbox: RunningSandbox, open_client: Any, kind: str, unused_port: int
) -> None:
    sms = open_client(
        kind, f"127.0.0.1:{unused_port}", retry=PATIENT_RETRY, options=QUICK_RECONNECT
    )
    started_at = time.monotonic()

    with pytest.raises(UnavailableError):
        await sms.start_verification(PHONE, timeout=5.0)
    once = time.monotonic() - started_at

    # With a request_id the same start is tried again and again, for most of its deadline.
    started_at = time.monotonic()
    with pytest.raises(UnavailableError):
        await sms.start_verification(PHONE, request_id="r-1", timeout=2.0)
    retried = time.monotonic() - started_at
    assert once < 1.0 < retried
    assert sandbox.sandbox.messages == []


@pytest.fixture
def unused_port() -> int:
    return free_port()

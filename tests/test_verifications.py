"""Verifications end to end: raw gRPC -> server -> sandbox, on the memory store and on Redis.

The code is read where a user reads it: from the SMS the sandbox delivered. Every promise of
StartVerification, CheckVerification and CancelVerification in the contract is played here
through the wire: codes approve once, wrong ones use checks, limits hold, ended verifications
answer with their reason, another caller's verification does not exist for it.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
import pytest
import redis.asyncio as aioredis
from support import (
    RedisServer,
    StartServer,
    log_events,
    make_config,
    scrape,
    set_store,
    value,
)
from verification_support import (
    OWNER_TOKEN,
    SECRET,
    STRANGER_TOKEN,
    TWO_CALLERS,
    Verifier,
    bad_fields,
    bearer,
    code_of,
    phone_numbers,
    reason,
    retry_delay_s,
    verifier,
    verify_section,
    wrong_code,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.config import VerifyConfig
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.sandbox import RunningSandbox
from yunpian_sms_server.shutdown import Shutdown
from yunpian_sms_server.stores import RedisStore, Store
from yunpian_sms_server.verification_state import (
    CodeHasher,
    VerificationState,
    VerificationStatus,
    new_verification_id,
)
from yunpian_sms_server.verifications import Checked, Verifications

MAX_CHECKS: Final = 5
MAX_SENDS: Final = 5
FAILED_PRECONDITION: Final = grpc.StatusCode.FAILED_PRECONDITION
NUMBERS: Final = phone_numbers("136")

# serve(**verify_overrides) -> a started server with verifications on, on the test's store.
Serve = Callable[..., Awaitable[SmsServer]]


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's per-number limits: resends go out back to back."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


@pytest.fixture
def serve(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> Serve:
    """Starts servers on each store in turn (conftest's store_table)."""

    async def start(*, auth: dict[str, Any] | None = None, **verify: Any) -> SmsServer:
        sections: dict[str, Any] = {"verify": verify_section(**verify), "store": store_table}
        if auth is not None:
            sections["auth"] = auth
        return await start_server(make_config(**sections))

    return start


@pytest.fixture
async def verifications(serve: Serve) -> AsyncIterator[Verifier]:
    server = await serve()
    async with verifier(server.port) as calls:
        yield calls


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def sent_to(sandbox: RunningSandbox, phone: str) -> int:
    return len(sandbox.sandbox.messages_to(phone))


async def test_the_code_sent_approves_the_verification_once(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    before = time.time()
    started = await verifications.start(f"+86 {phone[:3]}-{phone[3:7]}-{phone[7:]}")
    assert started.verification_id.startswith("vf_")
    assert started.phone_number == phone
    assert started.usage_type == pb.USAGE_TYPE_GENERIC
    assert started.status == pb.VERIFICATION_STATUS_PENDING
    assert (started.send_count, started.checks_remaining) == (1, MAX_CHECKS)
    assert not started.replayed
    expires_in = started.expire_time.ToNanoseconds() / 1e9 - before
    assert 599.0 < expires_in <= 601.0  # the default code_ttl_seconds
    [message] = quiet_sandbox.sandbox.messages_to(phone)
    assert started.message_id == str(message.sid)

    checked = await verifications.check(started.verification_id, code_of(quiet_sandbox, started))
    assert checked.approved
    assert checked.verification.verification_id == started.verification_id
    assert checked.verification.status == pb.VERIFICATION_STATUS_APPROVED
    assert checked.verification.checks_remaining == MAX_CHECKS - 1
    # Single use: the same right code again is refused, and says why.
    again = await refused(verifications.check(started.verification_id, message.code or ""))
    assert reason(again) == (FAILED_PRECONDITION, "VERIFICATION_APPROVED")
    assert sent_to(quiet_sandbox, phone) == 1


async def test_a_code_checks_by_phone_number_and_usage_type(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    started = await verifications.start(phone, pb.USAGE_TYPE_SIGN_IN)
    code = code_of(quiet_sandbox, started)
    # The pending verification of the number is the one of its usage type.
    generic = await refused(verifications.check_phone(phone, code))
    assert reason(generic) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
    checked = await verifications.check_phone(phone, code, pb.USAGE_TYPE_SIGN_IN)
    assert checked.approved
    assert checked.verification.verification_id == started.verification_id
    # Approved: no pending verification of the number is left.
    after = await refused(verifications.check_phone(phone, code, pb.USAGE_TYPE_SIGN_IN))
    assert reason(after) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")


async def test_a_wrong_code_uses_one_check_and_the_right_one_still_approves(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    started = await verifications.start(next(NUMBERS))
    code = code_of(quiet_sandbox, started)
    for remaining in (MAX_CHECKS - 1, MAX_CHECKS - 2):
        wrong = await verifications.check(started.verification_id, wrong_code(code))
        assert not wrong.approved
        assert wrong.verification.status == pb.VERIFICATION_STATUS_PENDING
        assert wrong.verification.checks_remaining == remaining
    right = await verifications.check(started.verification_id, code)
    assert right.approved
    assert right.verification.checks_remaining == MAX_CHECKS - 3


async def test_the_fifth_wrong_code_ends_the_verification_and_a_sixth_check_is_refused(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    started = await verifications.start(phone)
    code = code_of(quiet_sandbox, started)
    answers = [
        await verifications.check(started.verification_id, wrong_code(code))
        for _ in range(MAX_CHECKS)
    ]
    assert [answer.approved for answer in answers] == [False] * MAX_CHECKS
    assert [answer.verification.checks_remaining for answer in answers] == [4, 3, 2, 1, 0]
    statuses = [answer.verification.status for answer in answers]
    assert statuses == [pb.VERIFICATION_STATUS_PENDING] * 4 + [
        pb.VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED
    ]
    # Even the right code is refused now.
    sixth = await refused(verifications.check(started.verification_id, code))
    assert reason(sixth) == (FAILED_PRECONDITION, "VERIFICATION_MAX_ATTEMPTS")
    # The number can be verified again: a new verification, with a new code.
    restarted = await verifications.start(phone)
    assert restarted.verification_id != started.verification_id
    assert (restarted.send_count, restarted.checks_remaining) == (1, MAX_CHECKS)
    assert (
        await verifications.check(restarted.verification_id, code_of(quiet_sandbox, restarted))
    ).approved


async def test_an_expired_verification_refuses_even_its_right_code(
    serve: Serve, quiet_sandbox: RunningSandbox
) -> None:
    ttl_s = 1.0
    server = await serve(code_ttl_seconds=ttl_s)
    phone = next(NUMBERS)
    async with verifier(server.port) as verifications:
        started = await verifications.start(phone)
        code = code_of(quiet_sandbox, started)
        expire_at = started.expire_time.ToNanoseconds() / 1e9
        await asyncio.sleep(max(expire_at - time.time(), 0.0) + 0.05)
        # Before anything has looked at it: the number has no pending verification any more.
        by_phone = await refused(verifications.check_phone(phone, code))
        expired = await refused(verifications.check(started.verification_id, code))
        again = await refused(verifications.check(started.verification_id, code))
        canceled = await verifications.cancel(started.verification_id)
        restarted = await verifications.start(phone)
    assert reason(by_phone) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
    assert reason(expired) == (FAILED_PRECONDITION, "VERIFICATION_EXPIRED")
    assert reason(again) == (FAILED_PRECONDITION, "VERIFICATION_EXPIRED")
    assert canceled.status == pb.VERIFICATION_STATUS_EXPIRED  # an ended one is left as it is
    assert restarted.verification_id != started.verification_id


async def test_a_resend_is_a_new_sms_of_the_same_verification_and_every_code_sent_checks(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    approved_with = []
    for code_index in (0, 1):
        phone = next(NUMBERS)
        first = await verifications.start(phone)
        second = await verifications.start(phone)
        assert second.verification_id == first.verification_id
        assert (first.send_count, second.send_count) == (1, 2)
        assert second.message_id != first.message_id
        assert second.expire_time == first.expire_time  # a resend does not extend it
        assert second.checks_remaining == MAX_CHECKS
        assert sent_to(quiet_sandbox, phone) == 2
        codes = [code_of(quiet_sandbox, first), code_of(quiet_sandbox, second)]
        checked = await verifications.check(first.verification_id, codes[code_index])
        assert checked.approved, f"code {code_index + 1} of 2 was refused"
        assert checked.verification.send_count == 2
        approved_with.append(code_index)
    assert approved_with == [0, 1]


async def test_the_sixth_send_is_refused_until_the_verification_expires(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    sends = [await verifications.start(phone) for _ in range(MAX_SENDS)]
    assert [sent.send_count for sent in sends] == [1, 2, 3, 4, 5]
    assert len({sent.verification_id for sent in sends}) == 1
    asked_at = time.time()
    sixth = await refused(verifications.start(phone))
    assert reason(sixth) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFICATION_SEND_LIMIT")
    delay = retry_delay_s(sixth)
    left = sends[0].expire_time.ToNanoseconds() / 1e9 - asked_at
    assert delay is not None
    assert left - 1.0 <= delay <= left + 0.1, (delay, left)
    assert sent_to(quiet_sandbox, phone) == MAX_SENDS  # nothing more was sent
    # Every one of the five codes still checks.
    assert (
        await verifications.check(sends[0].verification_id, code_of(quiet_sandbox, sends[2]))
    ).approved


async def test_a_canceled_verification_refuses_its_code(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    started = await verifications.start(phone)
    code = code_of(quiet_sandbox, started)
    canceled = await verifications.cancel(started.verification_id)
    assert canceled.verification_id == started.verification_id
    assert canceled.status == pb.VERIFICATION_STATUS_CANCELED
    checked = await refused(verifications.check(started.verification_id, code))
    assert reason(checked) == (FAILED_PRECONDITION, "VERIFICATION_CANCELED")
    by_phone = await refused(verifications.check_phone(phone, code))
    assert reason(by_phone) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
    # Canceling again, or an approved one, leaves it as it is.
    assert (await verifications.cancel(started.verification_id)).status == (
        pb.VERIFICATION_STATUS_CANCELED
    )
    other = await verifications.start(next(NUMBERS))
    assert (
        await verifications.check(other.verification_id, code_of(quiet_sandbox, other))
    ).approved
    assert (await verifications.cancel(other.verification_id)).status == (
        pb.VERIFICATION_STATUS_APPROVED
    )


async def test_another_callers_verification_does_not_exist_for_it_and_its_guesses_cost_nothing(
    serve: Serve, quiet_sandbox: RunningSandbox
) -> None:
    server = await serve(auth=TWO_CALLERS)
    phone = next(NUMBERS)
    async with (
        verifier(server.port, bearer(OWNER_TOKEN)) as owner,
        verifier(server.port, bearer(STRANGER_TOKEN)) as stranger,
    ):
        started = await owner.start(phone)
        code = code_of(quiet_sandbox, started)
        vid = started.verification_id
        refusals = [
            # The right code too: it is not the stranger's verification.
            await refused(stranger.check(vid, code)),
            await refused(stranger.check_phone(phone, code)),
            await refused(stranger.cancel(vid)),
        ]
        refusals += [
            await refused(stranger.check(vid, wrong_code(code))) for _ in range(MAX_CHECKS + 1)
        ]
        # The stranger's own verification of the number is another one.
        its_own = await stranger.start(phone)
        wrong = await owner.check(vid, wrong_code(code))
        right = await owner.check(vid, code)
    assert {reason(error) for error in refusals} == {
        (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
    }
    assert its_own.verification_id != vid
    assert wrong.verification.checks_remaining == MAX_CHECKS - 1  # the stranger used none
    assert right.approved


async def test_a_start_retried_with_its_request_id_sends_nothing_and_answers_the_verification(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    phone = next(NUMBERS)
    first = await verifications.start(phone, pb.USAGE_TYPE_REGISTER, request_id="start-1")
    again = await verifications.start(phone, pb.USAGE_TYPE_REGISTER, request_id="start-1")
    assert not first.replayed
    assert again.replayed
    assert again.verification_id == first.verification_id
    assert (again.send_count, again.message_id) == (1, first.message_id)
    assert sent_to(quiet_sandbox, phone) == 1
    # The same request_id for another request is refused, and sends nothing either.
    reused = await refused(verifications.start(next(NUMBERS), request_id="start-1"))
    assert reason(reused) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert len(quiet_sandbox.sandbox.messages) == 1
    assert (
        await verifications.check(first.verification_id, code_of(quiet_sandbox, first))
    ).approved


async def test_parallel_checks_of_the_right_code_approve_exactly_once(
    verifications: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    started = await verifications.start(next(NUMBERS))
    code = code_of(quiet_sandbox, started)
    answers = await asyncio.gather(
        *(verifications.check(started.verification_id, code) for _ in range(MAX_CHECKS)),
        return_exceptions=True,
    )
    approved = [a for a in answers if isinstance(a, pb.CheckVerificationResponse) and a.approved]
    others = [a for a in answers if not isinstance(a, pb.CheckVerificationResponse)]
    assert len(approved) == 1, answers
    assert len(others) == MAX_CHECKS - 1, answers
    assert {reason(error) for error in others if isinstance(error, grpc.aio.AioRpcError)} == {
        (FAILED_PRECONDITION, "VERIFICATION_APPROVED")
    }


# Bad input: clear refusals naming the field, nothing sent, no check used. On one store.


@pytest.fixture
async def plain(
    start_server: StartServer, quiet_sandbox: RunningSandbox
) -> AsyncIterator[Verifier]:
    server = await start_server(make_config(verify=verify_section()))
    async with verifier(server.port) as calls:
        yield calls


@pytest.mark.parametrize(
    "code",
    ["12a456", "123", "12345678901", "1234567", "", "12345 ", "１２３４５６", "١٢٣٤٥٦", "-12345"],
    ids=[
        "letter",
        "3-digits",
        "11-digits",
        "7-digits",
        "empty",
        "space",
        "fullwidth",
        "arabic",
        "sign",
    ],
)
async def test_a_code_that_is_not_six_ascii_digits_is_invalid_and_uses_no_check(
    plain: Verifier, quiet_sandbox: RunningSandbox, code: str
) -> None:
    phone = next(NUMBERS)
    started = await plain.start(phone)
    by_id = await refused(plain.check(started.verification_id, code))
    by_phone = await refused(plain.check_phone(phone, code))
    for error in (by_id, by_phone):
        assert reason(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CODE")
        assert bad_fields(error) == ["code"]
    if code:
        assert code not in (by_id.details() or "")
    wrong = await plain.check(started.verification_id, wrong_code(code_of(quiet_sandbox, started)))
    assert wrong.verification.checks_remaining == MAX_CHECKS - 1
    assert sent_to(quiet_sandbox, phone) == 1


async def test_a_check_without_a_target_names_the_target(
    plain: Verifier, quiet_sandbox: RunningSandbox
) -> None:
    error = await refused(plain.check_request(pb.CheckVerificationRequest(code="123456")))
    assert reason(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERIFICATION_TARGET")
    assert bad_fields(error) == ["target"]


@pytest.mark.parametrize(
    "verification_id",
    ["vf_" + "a" * 10_240, "", "vf_a/b", "not-an-id", "vf_" + "é" * 10],
    ids=["10KB", "empty", "slash", "prefix", "unicode"],
)
async def test_an_id_that_cannot_be_one_is_invalid(
    plain: Verifier, quiet_sandbox: RunningSandbox, verification_id: str
) -> None:
    checked = await refused(plain.check(verification_id, "123456"))
    canceled = await refused(plain.cancel(verification_id))
    for error in (checked, canceled):
        assert reason(error) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VERIFICATION_ID")
        assert bad_fields(error) == ["verification_id"]
        assert len(error.details() or "") < 512  # the id is not echoed back


async def test_an_unknown_id_is_not_found(plain: Verifier, quiet_sandbox: RunningSandbox) -> None:
    unknown = "vf_" + "A" * 32
    for error in (
        await refused(plain.check(unknown, "123456")),
        await refused(plain.cancel(unknown)),
        await refused(plain.check_phone(next(NUMBERS), "123456")),
    ):
        assert reason(error) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("phone_number", "not a phone"),
        ("phone_number", "010-12345678"),
        ("phone_number", ""),
        ("usage_type", 99),
        ("request_id", "x" * 129),
        ("request_id", "bad\nid"),
    ],
)
async def test_a_start_refuses_bad_input_as_send_code_does(
    start_server: StartServer, quiet_sandbox: RunningSandbox, field: str, bad: object
) -> None:
    server = await start_server(make_config(verify=verify_section()))
    fields: dict[str, Any] = {"phone_number": next(NUMBERS), "usage_type": 0, "request_id": ""}
    fields[field] = bad
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        started = await refused(stub.StartVerification(pb.StartVerificationRequest(**fields)))
        sent = await refused(stub.SendCode(pb.SendCodeRequest(code="123456", **fields)))
    assert started.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(started) == reason(sent)
    assert bad_fields(started) == bad_fields(sent) == [field]
    assert quiet_sandbox.sandbox.messages == []


async def test_verifications_are_refused_when_disabled(
    start_server: StartServer, quiet_sandbox: RunningSandbox
) -> None:
    server = await start_server(make_config())  # [verify] enabled defaults to false
    async with verifier(server.port) as calls:
        errors = [
            await refused(calls.start(next(NUMBERS))),
            await refused(calls.check("vf_" + "A" * 32, "123456")),
            await refused(calls.check_phone(next(NUMBERS), "123456")),
            await refused(calls.cancel("vf_" + "A" * 32)),
        ]
    assert {reason(error) for error in errors} == {(FAILED_PRECONDITION, "VERIFICATION_DISABLED")}
    assert quiet_sandbox.sandbox.messages == []


# Metrics and logs of a whole flow.


async def test_metrics_count_each_verification_event_and_check_result_and_logs_name_the_id(
    start_server: StartServer, quiet_sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    # Ten digits: a code cannot turn up by chance in the log's numbers.
    server = await start_server(
        make_config(
            server={"metrics_listen": "127.0.0.1:0"},
            verify=verify_section(code_ttl_seconds=1.0, code_length=10),
        )
    )
    codes: list[str] = []
    async with verifier(server.port) as calls:
        # D: left to expire while the others run.
        expiring = await calls.start(next(NUMBERS))
        codes.append(code_of(quiet_sandbox, expiring))
        # A (SignIn): started, resent, a wrong check, approved.
        signin = await calls.start(phone_a := next(NUMBERS), pb.USAGE_TYPE_SIGN_IN)
        resent = await calls.start(phone_a, pb.USAGE_TYPE_SIGN_IN)
        codes += [code_of(quiet_sandbox, signin), code_of(quiet_sandbox, resent)]
        await calls.check(signin.verification_id, wrong_code(*codes, length=10))
        await calls.check(signin.verification_id, codes[-1])
        # B: started, four wrong checks and the one that reaches max attempts, one more (ended).
        exhausted = await calls.start(next(NUMBERS))
        codes.append(code_of(quiet_sandbox, exhausted))
        for _ in range(MAX_CHECKS):
            await calls.check(exhausted.verification_id, wrong_code(*codes, length=10))
        await refused(calls.check(exhausted.verification_id, codes[-1]))
        # C: started, canceled (then canceled again: nothing changes).
        canceled = await calls.start(next(NUMBERS))
        codes.append(code_of(quiet_sandbox, canceled))
        await calls.cancel(canceled.verification_id)
        await calls.cancel(canceled.verification_id)
        # An unknown id.
        await refused(calls.check("vf_" + "B" * 32, "1234567890"))
        # D expires; the check that finds it so ends it.
        expire_at = expiring.expire_time.ToNanoseconds() / 1e9
        await asyncio.sleep(max(expire_at - time.time(), 0.0) + 0.05)
        await refused(calls.check(expiring.verification_id, codes[0]))
    samples = await scrape(server)

    def event(usage_type: str, name: str) -> float:
        return value(samples, "yunpian_sms_verifications_total", usage_type=usage_type, event=name)

    assert {
        name: event("SignIn", name)
        for name in ("started", "resent", "approved", "max_attempts", "canceled", "expired")
    } == {"started": 1, "resent": 1, "approved": 1, "max_attempts": 0, "canceled": 0, "expired": 0}
    assert {
        name: event("Generic", name)
        for name in ("started", "resent", "approved", "max_attempts", "canceled", "expired")
    } == {"started": 3, "resent": 0, "approved": 0, "max_attempts": 1, "canceled": 1, "expired": 1}
    checks = {
        result: value(samples, "yunpian_sms_verification_checks_total", result=result)
        for result in ("approved", "wrong", "max_attempts", "ended", "not_found")
    }
    assert checks == {"approved": 1, "wrong": 5, "max_attempts": 1, "ended": 2, "not_found": 1}

    events = log_events(log_output, "rpc")
    verification_rpcs = [e for e in events if e["rpc"] != "SendCode"]
    assert len(verification_rpcs) == 17
    ids = {expiring.verification_id, signin.verification_id, exhausted.verification_id}
    ids |= {canceled.verification_id}
    logged = {e["verification_id"] for e in verification_rpcs if e["grpc_code"] != "NOT_FOUND"}
    assert logged == ids
    changes = [e["verification_change"] for e in verification_rpcs if e["verification_change"]]
    assert sorted(changes) == sorted(
        ["started"] * 4 + ["resent", "approved", "max_attempts", "canceled", "expired"]
    )
    text = log_output.getvalue()
    for code in codes:
        assert code not in text


# Races, played deterministically: the store makes every caller wait at one point until all
# have got there, so the interleaving that replicas produce now and then happens every time.


class Lockstep:
    """A store whose `operation` answers only once `parties` calls of it have been answered."""

    def __init__(self, store: Store, operation: str, parties: int) -> None:
        self._store = store
        self._operation = operation
        self._barrier = asyncio.Barrier(parties)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name != self._operation:
            return found

        async def in_lockstep(*args: Any) -> Any:
            answer = await found(*args)
            await self._barrier.wait()
            return answer

        return in_lockstep


async def pending_verification(store: Store, hasher: CodeHasher, code: str) -> str:
    """A pending verification of CALLER in the store, with `code` sent; its id."""
    fresh = VerificationState(
        verification_id=new_verification_id(),
        caller="caller",
        phone=next(NUMBERS),
        usage_type="Generic",
        status=VerificationStatus.PENDING,
        expires_at=0.0,
        max_checks=MAX_CHECKS,
    )
    state = await store.open_verification(f"caller\x1f{fresh.phone}\x1fGeneric", fresh, 60, 60)
    vid = state.verification_id
    await store.add_verification_code(vid, hasher.hash(vid, code), MAX_SENDS, 60)
    return vid


def verifications_on(store: Any, shutdown: Shutdown | None = None) -> Verifications:
    config = VerifyConfig(enabled=True, secret=SECRET)
    # Checks and cancels never send: no send protocol is needed.
    hasher = CodeHasher(SECRET.encode())
    return Verifications(  # type: ignore[arg-type]
        store, None, config, hasher, shutdown or Shutdown()
    )


async def test_right_codes_counted_together_approve_once(store: Store) -> None:
    parties = 3
    code = "482915"
    vid = await pending_verification(store, CodeHasher(SECRET.encode()), code)
    verifications = verifications_on(Lockstep(store, "use_verification_check", parties))
    answers = await asyncio.gather(
        *(verifications.check("caller", vid, code) for _ in range(parties)),
        return_exceptions=True,
    )
    approved = [answer for answer in answers if isinstance(answer, Checked) and answer.approved]
    refused = [answer for answer in answers if isinstance(answer, ServiceError)]
    assert len(approved) == 1, answers
    assert [error.reason for error in refused] == [Reason.VERIFICATION_APPROVED] * (parties - 1)


async def test_cancels_together_cancel_once(store: Store) -> None:
    parties = 3
    vid = await pending_verification(store, CodeHasher(SECRET.encode()), "482915")
    verifications = verifications_on(Lockstep(store, "get_verification", parties))
    answers = await asyncio.gather(*(verifications.cancel("caller", vid) for _ in range(parties)))
    assert {state.status for state, _ in answers} == {VerificationStatus.CANCELED}
    assert sorted(canceled for _, canceled in answers) == [False] * (parties - 1) + [True]


class Stalling:
    """A store whose `use_verification_check` waits until released (a slow store)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def use_verification_check(self, *args: Any) -> Any:
        self.reached.set()
        await self.release.wait()
        return await self._store.use_verification_check(*args)


async def cut_off(stalling: Stalling, check: Awaitable[Checked]) -> None:
    """Runs a check until it waits for the store, then cancels it (its client gave up, its
    deadline passed) and lets the store answer."""
    task = asyncio.ensure_future(check)
    await stalling.reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stalling.release.set()


async def test_a_last_wrong_check_cut_off_still_ends_the_verification(store: Store) -> None:
    code = "482915"
    vid = await pending_verification(store, CodeHasher(SECRET.encode()), code)
    for _ in range(MAX_CHECKS - 1):
        await verifications_on(store).check("caller", vid, wrong_code(code))
    stalling = Stalling(store)
    verifications = verifications_on(stalling)
    await cut_off(stalling, verifications.check("caller", vid, wrong_code(code)))
    await verifications.drain()
    # Otherwise it would stay pending with no check left: resends to it would go out with codes
    # that can never be checked, until it expires.
    state = await store.get_verification(vid, 60)
    assert state is not None
    assert (state.status, state.checks_used) == (VerificationStatus.MAX_ATTEMPTS_REACHED, 5)


async def test_a_right_check_cut_off_is_still_decided_and_a_retry_is_told_so(
    store: Store,
) -> None:
    code = "482915"
    vid = await pending_verification(store, CodeHasher(SECRET.encode()), code)
    stalling = Stalling(store)
    verifications = verifications_on(stalling)
    await cut_off(stalling, verifications.check("caller", vid, code))
    await verifications.drain()
    state = await store.get_verification(vid, 60)
    assert state is not None
    # A check begun is decided whole, whatever its call became: never half-counted.
    assert (state.status, state.checks_used) == (VerificationStatus.APPROVED, 1)
    with pytest.raises(ServiceError) as retried:
        await verifications_on(store).check("caller", vid, code)
    assert retried.value.reason is Reason.VERIFICATION_APPROVED


async def test_a_check_interrupted_by_a_shutdown_answers_what_the_store_decided(
    store: Store,
) -> None:
    # The store decides the check whatever happens to the call; when the call was interrupted by
    # the server's shutdown (not by its client), it can still answer: it answers that.
    code = "482915"
    vid = await pending_verification(store, CodeHasher(SECRET.encode()), code)
    stalling, shutdown = Stalling(store), Shutdown()
    verifications = verifications_on(stalling, shutdown)
    rpc = asyncio.ensure_future(verifications.check("caller", vid, code))
    shutdown.enter(rpc)  # type: ignore[arg-type]
    await stalling.reached.wait()
    assert shutdown.interrupt() == 1
    await asyncio.sleep(0)
    stalling.release.set()
    checked = await rpc
    assert checked.approved
    assert checked.state.status is VerificationStatus.APPROVED


async def test_a_check_cut_off_that_the_store_then_fails_is_logged(
    faulty_redis: RedisServer, redis_admin: aioredis.Redis, log_output: io.StringIO
) -> None:
    # Nobody hears of the check's failure but the log: its call is gone.
    store = RedisStore(faulty_redis.url)
    try:
        vid = await pending_verification(store, CodeHasher(SECRET.encode()), "482915")
        stalling = Stalling(store)
        verifications = verifications_on(stalling)
        task = asyncio.ensure_future(verifications.check("caller", vid, "000000"))
        await stalling.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await set_store(redis_admin, "down")
        stalling.release.set()
        await verifications.drain()
    finally:
        await store.close()
    [event] = log_events(log_output, "verification_check_failed")
    assert event["level"] == "warning"
    assert event["error"] == "StoreUnavailableError"

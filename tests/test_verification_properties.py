"""The verification status machine against a model of its design (hypothesis).

Each example plays a random sequence of operations on two numbers against a real in-process
server (memory store, or a real Redis): start (or resend), check with a code that was sent (by id
or by number), check with a wrong code, cancel, and expire (sleeping past every pending
verification's expiry; the TTL is short). Every answer is held to

* the invariants, whatever else: no wrong code is ever approved, no verification is approved
  twice, no verification answers more than max_checks checks, every check answer's
  checks_remaining counts exactly the checks answered before it, no verification sends more than
  max_sends SMS;
* a model of the design: pending -> approved / canceled / expired / max_attempts_reached, every
  code sent valid until it ends, a start on a pending verification a resend (same id, the count
  up, refused at max_sends), an ended verification kept (status only) for keep_s and then
  forgotten. Time is real: where an operation runs so close to an expiry (or a forgetting) that
  either answer is right, the model accepts either and follows the server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support import RedisServer, StartServer, fresh_database, make_config
from verification_support import (
    Verifier,
    reason,
    redis_store,
    verifier,
    verify_section,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.sandbox import RunningSandbox

TTL_S: Final = 0.2  # also how long an ended verification is kept
MAX_CHECKS: Final = 2
MAX_SENDS: Final = 2
CODE_LENGTH: Final = 6
PHONES: Final = 2
# Clock steps of the stores (Redis: milliseconds) and the answer's rounding: within this of a
# boundary, either side may be seen.
EPSILON_S: Final = 0.01
SETTINGS: Final = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REDIS_DB: Final = 15
MAX_OPERATIONS: Final = 20
_numbers = itertools.count()

PENDING: Final = "PENDING"
APPROVED: Final = "APPROVED"
CANCELED: Final = "CANCELED"
EXPIRED: Final = "EXPIRED"
MAX_ATTEMPTS: Final = "MAX_ATTEMPTS_REACHED"
GONE: Final = "GONE"  # forgotten: keep_s after it ended
ENDED_REASONS: Final = {
    APPROVED: "VERIFICATION_APPROVED",
    CANCELED: "VERIFICATION_CANCELED",
    EXPIRED: "VERIFICATION_EXPIRED",
    MAX_ATTEMPTS: "VERIFICATION_MAX_ATTEMPTS",
}
STATUS_NAMES: Final = {
    pb.VERIFICATION_STATUS_PENDING: PENDING,
    pb.VERIFICATION_STATUS_APPROVED: APPROVED,
    pb.VERIFICATION_STATUS_CANCELED: CANCELED,
    pb.VERIFICATION_STATUS_EXPIRED: EXPIRED,
    pb.VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED: MAX_ATTEMPTS,
}


@dataclass(frozen=True)
class Start:
    phone: int


@dataclass(frozen=True)
class CheckRight:
    phone: int
    which: int  # which of the codes sent (modulo how many)
    by_phone: bool


@dataclass(frozen=True)
class CheckWrong:
    phone: int
    by_phone: bool


@dataclass(frozen=True)
class Cancel:
    phone: int


@dataclass(frozen=True)
class Expire:
    pass


Operation = Start | CheckRight | CheckWrong | Cancel | Expire
PHONE_INDEXES: Final = st.integers(0, PHONES - 1)
# Starts and checks above all; an expiry (a sleep) now and then.
OPERATIONS: Final = st.one_of(
    st.builds(Start, PHONE_INDEXES),
    st.builds(Start, PHONE_INDEXES),
    st.builds(CheckRight, PHONE_INDEXES, st.integers(0, MAX_SENDS - 1), st.booleans()),
    st.builds(CheckWrong, PHONE_INDEXES, st.booleans()),
    st.builds(CheckWrong, PHONE_INDEXES, st.booleans()),
    st.builds(CheckWrong, PHONE_INDEXES, st.booleans()),
    st.builds(Cancel, PHONE_INDEXES),
    st.just(Expire()),
)


@dataclass
class Modelled:
    """What the model knows of one verification."""

    vid: str
    expires_at: float
    codes: list[str]  # every code sent for it, from the sandbox
    status: str = PENDING
    checks: int = 0  # check answers it gave (OK answers: a check used)
    approvals: int = 0
    ended: tuple[float, float] | None = None  # the call that ended it: started, answered
    gone: bool = False

    @property
    def sends(self) -> int:
        return len(self.codes)


def phase(low: float, high: float, started: float, answered: float) -> str:
    """Where a call that ran from `started` to `answered` stands to a moment in [low, high]."""
    if answered < low - EPSILON_S:
        return "before"
    if started > high + EPSILON_S:
        return "after"
    return "either"


def possible(v: Modelled, started: float, answered: float) -> set[str]:
    """The states the server may have seen the verification in during the call."""
    if v.gone:
        return {GONE}
    states = {v.status}
    if v.status == PENDING:
        states = {
            "before": {PENDING},
            "after": {EXPIRED},
            "either": {PENDING, EXPIRED},
        }[phase(v.expires_at, v.expires_at, started, answered)]
    if v.ended is not None:
        forget_low, forget_high = v.ended[0] + TTL_S, v.ended[1] + TTL_S
    else:  # it is forgotten keep_s after its expiry
        forget_low = forget_high = v.expires_at + TTL_S
    forgetting = phase(forget_low, forget_high, started, answered)
    if forgetting == "after":
        return {GONE}
    if forgetting == "either":
        states.add(GONE)
    return states


@dataclass
class Example:
    """One example's numbers, what the model knows, and the invariants' bookkeeping."""

    calls: Verifier
    sandbox: RunningSandbox
    phones: list[str]
    latest: dict[int, Modelled] = field(default_factory=dict)  # per number: its latest
    known: dict[str, Modelled] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def code_sent(self, answer: pb.Verification) -> str:
        [message] = [m for m in self.sandbox.sandbox.messages if str(m.sid) == answer.message_id]
        assert message.code is not None
        return message.code

    def check_invariants(
        self, v: Modelled, answer: pb.CheckVerificationResponse, code: str
    ) -> None:
        """What holds of every check answer, whatever the model thinks."""
        v.checks += 1
        assert v.checks <= MAX_CHECKS, self.log
        assert answer.verification.checks_remaining == MAX_CHECKS - v.checks, self.log
        if answer.approved:
            assert code in v.codes, f"a code never sent was approved: {self.log}"
            v.approvals += 1
            assert v.approvals == 1, f"approved twice: {self.log}"


def wrong_code(sent: set[str]) -> str:
    """A code that was never sent in this example."""
    for n in itertools.count():
        code = f"{n * 7919 % 10**CODE_LENGTH:0{CODE_LENGTH}d}"
        if code not in sent:
            return code
    raise AssertionError("unreachable")


async def outcome(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error


def error_state(error: grpc.aio.AioRpcError) -> str:
    """The state a refusal of a check says the verification is in."""
    code, why = reason(error)
    if code == grpc.StatusCode.NOT_FOUND:
        assert why == "VERIFICATION_NOT_FOUND"
        return GONE
    assert code == grpc.StatusCode.FAILED_PRECONDITION, error
    [state] = [state for state, ended in ENDED_REASONS.items() if ended == why]
    return state


async def start(ex: Example, op: Start) -> None:
    phone = ex.phones[op.phone]
    v = ex.latest.get(op.phone)
    messages = len(ex.sandbox.sandbox.messages)
    started = time.time()
    answer = await outcome(ex.calls.start(phone))
    answered = time.time()
    states = possible(v, started, answered) if v else {GONE}
    sent = len(ex.sandbox.sandbox.messages) - messages
    if isinstance(answer, grpc.aio.AioRpcError):
        # Only the send limit of a pending verification refuses a start.
        event("start refused: send limit")
        assert reason(answer) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFICATION_SEND_LIMIT")
        assert v is not None, ex.log
        assert PENDING in states, ex.log
        assert v.sends == MAX_SENDS, ex.log
        assert sent == 0
        return
    assert sent == 1, ex.log
    assert answer.status == pb.VERIFICATION_STATUS_PENDING
    assert answer.send_count <= MAX_SENDS
    event("start: resend" if v is not None and answer.verification_id == v.vid else "start: new")
    if v is not None and answer.verification_id == v.vid:  # a resend
        assert PENDING in states, ex.log
        assert v.sends < MAX_SENDS, ex.log
        # A resend does not extend it.
        assert answer.expire_time.ToNanoseconds() / 1e9 == pytest.approx(v.expires_at, abs=1e-3)
        v.codes.append(ex.code_sent(answer))
        assert answer.send_count == v.sends
        assert answer.checks_remaining == MAX_CHECKS - v.checks
        return
    # A new verification: the number had none pending.
    assert answer.verification_id not in ex.known, ex.log
    assert states != {PENDING}, ex.log
    if v is not None and v.status == PENDING:
        v.status = EXPIRED
    assert (answer.send_count, answer.checks_remaining) == (1, MAX_CHECKS)
    fresh = Modelled(
        answer.verification_id, answer.expire_time.ToNanoseconds() / 1e9, [ex.code_sent(answer)]
    )
    ex.latest[op.phone] = ex.known[fresh.vid] = fresh


async def check(ex: Example, op: CheckRight | CheckWrong) -> None:
    v = ex.latest.get(op.phone)
    if v is None:
        return
    if isinstance(op, CheckRight):
        code, right = v.codes[op.which % v.sends], True
    else:
        code, right = wrong_code({c for known in ex.known.values() for c in known.codes}), False
    started = time.time()
    if op.by_phone:
        answer = await outcome(ex.calls.check_phone(ex.phones[op.phone], code))
    else:
        answer = await outcome(ex.calls.check(v.vid, code))
    answered = time.time()
    states = possible(v, started, answered)
    if isinstance(answer, grpc.aio.AioRpcError):
        seen = error_state(answer)
        event(f"check refused: {seen}" + (" (by number)" if op.by_phone else ""))
        if op.by_phone and seen == GONE:
            # No pending verification of the number: it may still be kept, ended.
            assert states - {PENDING}, ex.log
            return
        if op.by_phone:
            # Found pending, then seen expired: only at its expiry. After it (or once ended), a
            # number has no pending verification: NOT_FOUND, never the ended one's reason.
            assert (seen, PENDING in states) == (EXPIRED, True), (seen, states, ex.log)
        assert seen in states, (seen, states, ex.log)
        if seen == GONE:
            v.gone = True
        elif v.status == PENDING:
            v.status = EXPIRED
        return
    assert answer.verification.verification_id == v.vid
    assert PENDING in states, (states, ex.log)
    ex.check_invariants(v, answer, code)
    event(f"check answered: approved={answer.approved}")
    if v.checks == MAX_CHECKS and not right:
        event("check answered: the last check, wrong")
    assert answer.approved == right, ex.log
    assert answer.verification.send_count == v.sends
    if right:
        v.status, v.ended = APPROVED, (started, answered)
    elif v.checks == MAX_CHECKS:
        v.status, v.ended = MAX_ATTEMPTS, (started, answered)
    assert STATUS_NAMES[answer.verification.status] == v.status, ex.log


async def cancel(ex: Example, op: Cancel) -> None:
    v = ex.latest.get(op.phone)
    if v is None:
        return
    started = time.time()
    answer = await outcome(ex.calls.cancel(v.vid))
    answered = time.time()
    states = possible(v, started, answered)
    if isinstance(answer, grpc.aio.AioRpcError):
        assert reason(answer) == (grpc.StatusCode.NOT_FOUND, "VERIFICATION_NOT_FOUND")
        assert GONE in states, ex.log
        v.gone = True
        return
    seen = STATUS_NAMES[answer.status]
    event(f"cancel answered: {seen}")
    if seen == CANCELED and v.status == PENDING:
        assert PENDING in states, ex.log
        v.status, v.ended = CANCELED, (started, answered)
        return
    assert seen in states, (seen, states, ex.log)  # an ended one is left as it is
    v.status = seen


async def expire(ex: Example) -> None:
    """Sleeps until every pending verification has expired."""
    pending = [v.expires_at for v in ex.known.values() if v.status == PENDING and not v.gone]
    if pending:
        event("expire: slept")
        await asyncio.sleep(max(max(pending) - time.time(), 0.0) + 3 * EPSILON_S)


@pytest.fixture(params=["memory", "redis"])
async def calls(
    request: pytest.FixtureRequest, start_server: StartServer, sandbox: RunningSandbox
) -> AsyncIterator[Verifier]:
    sandbox.sandbox.enforce_limits = False
    store: dict[str, Any] = {"url": "memory://"}
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        store = redis_store(await fresh_database(redis_server, REDIS_DB))
    verify = verify_section(
        code_length=CODE_LENGTH,
        code_ttl_seconds=TTL_S,
        max_checks=MAX_CHECKS,
        max_sends=MAX_SENDS,
    )
    server = await start_server(make_config(verify=verify, store=store))
    async with verifier(server.port) as verifications:
        yield verifications


@SETTINGS
# Each number starts with a verification: the operations after it have one to act on.
@given(
    operations=st.lists(OPERATIONS, min_size=4, max_size=MAX_OPERATIONS).map(
        lambda operations: [Start(0), Start(1), *operations]
    )
)
# Always played: a resend then the first code; the send limit; the last check approving; a
# cancel; an expiry between a resend and checks by number and by id; a cancel after it.
@example(
    operations=[
        Start(0),
        Start(0),
        CheckRight(0, 0, by_phone=False),
        Start(1),
        Start(1),
        Start(1),
        CheckWrong(1, by_phone=True),
        CheckRight(1, 1, by_phone=False),
        Start(1),
        Cancel(1),
        CheckRight(1, 0, by_phone=True),
        Start(0),
        Start(0),
        Expire(),
        CheckRight(0, 1, by_phone=True),
        CheckRight(0, 1, by_phone=False),
        Cancel(0),
    ]
)
# ...and every check used by wrong codes, then the right one refused, then a new verification.
@example(
    operations=[
        Start(0),
        CheckWrong(0, by_phone=False),
        CheckWrong(0, by_phone=True),
        CheckRight(0, 0, by_phone=False),
        CheckRight(0, 0, by_phone=True),
        Start(0),
        CheckRight(0, 0, by_phone=True),
    ]
)
async def test_the_status_machine_keeps_its_promises_and_agrees_with_the_model(
    calls: Verifier, sandbox: RunningSandbox, operations: list[Operation]
) -> None:
    phones = [f"133{next(_numbers):08d}" for _ in range(PHONES)]
    ex = Example(calls, sandbox, phones)
    for op in operations:
        ex.log.append(repr(op))
        if isinstance(op, Start):
            await start(ex, op)
        elif isinstance(op, CheckRight | CheckWrong):
            await check(ex, op)
        elif isinstance(op, Cancel):
            await cancel(ex, op)
        else:
            await expire(ex)
    for v in ex.known.values():
        assert v.approvals <= 1
        assert v.checks <= MAX_CHECKS
        assert v.sends <= MAX_SENDS

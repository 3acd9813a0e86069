"""Sending one verification SMS, never twice: the whole protocol of a SendCode, in order.

1. Coalesce: a call whose request_id another call of this server is sending waits for that call
   and answers with its outcome, so the store is asked once per request_id and server.
2. Claim the request_id in the store, or find its recorded outcome and replay it.
3. Count the send against the rate limits (with a request_id, in the same store operation as
   the claim: one round trip claims and counts, or does neither).
4. Prepare the text: the order's own, or what its `SendStep` makes (a verification's new code).
5. Call YunPian, once.
6. Settle: record the outcome if an SMS was or may have been sent (the request_id replays it, the
   rate-limit slots stay counted); otherwise release the request_id, give the slots back and
   withdraw what the step prepared, so a retry is judged afresh.

Every way a call can end is decided here. A refusal or a failure that sent nothing settles as
"nothing sent". A call cancelled by its client, cut by its deadline or interrupted by a
shutdown (or failing on a bug) settles as "nothing sent" if it had not yet connected to
YunPian, and otherwise as an SMS that may have been sent (PROVIDER_TIMEOUT,
`delivery=unknown`). Settling runs to its end whatever happens to the call: once cancelled, it
continues in a task of its own that the server awaits before it closes the store.

A store failure refuses the send (STORE_UNAVAILABLE) under `store.on_error = "deny"`; under
"allow" the send goes ahead without that step. Outcomes the store could not record, and under
"allow" every outcome that may have sent an SMS, are also remembered by this server for the
record's lifetime (up to LOCAL_RECORDS), so that a store outage cannot make one request_id send
twice from one server; every such outcome is remembered a few seconds in any case, so a burst
of retries replays it without asking the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.delivery_state import SentMessage
from yunpian_sms_server.errors import DELIVERY_UNKNOWN, Reason, ServiceError
from yunpian_sms_server.ids import new_id
from yunpian_sms_server.limits import Window
from yunpian_sms_server.phone import PhoneNumber
from yunpian_sms_server.rate_limits import RateLimiter
from yunpian_sms_server.shutdown import Shutdown
from yunpian_sms_server.stores import ClaimState, Store, StoreUnavailableError
from yunpian_sms_server.yunpian import SendAttempt, YunpianClient

# How often a call waiting for another replica's claim asks the store again.
WAIT_POLL_S: Final = 0.02
# A claim outlives its call's own budget by this much, in case the holder is slow to settle.
LEASE_MARGIN_S: Final = 1.0
# Outcomes this server remembers beside the store (see the module's docstring), at most.
LOCAL_RECORDS: Final = 10_000
# A send's outcome stays in this server this long after it settles, so duplicates that reach
# it just after the first call ended (a burst of retries) replay it without asking the store.
RECENT_OUTCOME_S: Final = 5.0
# The outcome of a call interrupted once its request may have left.
INTERRUPTED_MESSAGE: Final = (
    "The call ended before YunPian answered; the SMS may have been sent. "
    "Retry only with the same request_id."
)
_RESPONSE: Final = b"R"
_TAGGED_RESPONSE: Final = b"T"
_ERROR: Final = b"E"
_TAG_LENGTH: Final = struct.Struct("<H")

_log = structlog.get_logger("yunpian_sms.send")

Outcome = pb.SendCodeResponse | ServiceError


class SendStep(Protocol):
    """What a send does once its request_id is claimed and it is counted, before YunPian.

    `prepare` makes the text to send and the code in it (it may refuse with a ServiceError:
    nothing is sent);
    `withdraw` undoes it when nothing was sent. `tag` (set by `prepare`) is recorded with the
    outcome, and a replay of the request_id hands it back.
    """

    tag: str

    async def prepare(self) -> tuple[str, str]: ...

    async def withdraw(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SendOrder:
    """A valid request to send one SMS: who asks, to whom, and its text (or its step's)."""

    caller: str
    phone: PhoneNumber
    usage_type: str
    # The caller's code; "" when the step makes it (it is then not part of the fingerprint).
    code: str = field(repr=False)
    text: str = field(repr=False)
    request_id: str = ""  # "" when the caller gave none: no idempotency
    step: SendStep | None = None


@dataclass(frozen=True, slots=True)
class ReportCollection:
    """Delivery reports are collected: every message sent is kept this long for its report,
    and, when YunPian pushes them, each send names where (its callback_url). A report that came
    before its message was recorded is taken in then, and told to `on_taken_in`."""

    keep_s: float
    callback_url: str = ""
    on_taken_in: Callable[[SentMessage], None] = lambda message: None


@dataclass(frozen=True, slots=True)
class Sent:
    """An SMS sent (or a replay of one), with the tag of the step that prepared it."""

    response: pb.SendCodeResponse
    tag: str = ""


def may_have_sent(outcome: Outcome) -> bool:
    """Whether an SMS was or may have been sent: exactly the outcomes that are recorded."""
    return not isinstance(outcome, ServiceError) or outcome.delivery_unknown


def encode_outcome(outcome: Outcome, tag: str = "") -> bytes:
    """The recorded form of an outcome and its step's tag."""
    if isinstance(outcome, ServiceError):
        fields = {"reason": outcome.reason.value, "message": outcome.message, "tag": tag}
        return _ERROR + json.dumps({**fields, "metadata": outcome.metadata}).encode()
    if not tag:
        return _RESPONSE + outcome.SerializeToString()
    encoded = tag.encode()
    return _TAGGED_RESPONSE + _TAG_LENGTH.pack(len(encoded)) + encoded + outcome.SerializeToString()


def decode_outcome(record: bytes) -> tuple[Outcome, str]:
    """A recorded outcome as a replay answers it (a response marked replayed, or the error),
    and its tag."""
    marker, tag = record[:1], ""
    if marker == _TAGGED_RESPONSE:
        (length,) = _TAG_LENGTH.unpack_from(record, 1)
        start = 1 + _TAG_LENGTH.size
        tag, record = record[start : start + length].decode(), _RESPONSE + record[start + length :]
    if record.startswith(_RESPONSE):
        response = pb.SendCodeResponse.FromString(record[1:])
        response.replayed = True
        return response, tag
    fields = json.loads(record[1:])
    metadata = {**fields["metadata"], "replayed": "true"}
    error = ServiceError(Reason(fields["reason"]), fields["message"], metadata=metadata)
    return error, fields.get("tag", "")


def interrupted_outcome(why: str) -> ServiceError:
    """What a call interrupted after its request may have left is recorded (and answered) as."""
    return ServiceError(
        Reason.PROVIDER_TIMEOUT,
        INTERRUPTED_MESSAGE,
        metadata={"delivery": DELIVERY_UNKNOWN, "interrupted": why},
    )


class Fingerprints:
    """Keyed hashes of what a request asks (number, usage type, code): the code is never stored.

    The key is a secret of its own, not the YunPian API key, so rotating the API key does not
    turn retries into REQUEST_ID_REUSED. Hashes under previous secrets are offered too, so the
    secret itself can be rotated while records made under the old one are still alive.
    """

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        # Each secret's HMAC keyed once and copied per request: hmac.digest keys it (and looks
        # the hash up by name) every time, ~0.6 µs more.
        self._keyed = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in (secret, *previous))

    def of(self, order: SendOrder) -> tuple[str, ...]:
        """The request's fingerprints, the current secret's first (a request whose code the
        service makes is fingerprinted without it: a retry makes another)."""
        message = "\x1f".join((order.phone.e164, order.usage_type, order.code)).encode()
        fingerprints = []
        for keyed in self._keyed:
            mac = keyed.copy()
            mac.update(message)
            fingerprints.append(mac.hexdigest())
        return tuple(fingerprints)


class _Flight:
    """A send of one request_id in progress in this server; duplicates wait for its record."""

    __slots__ = ("done", "fingerprint")

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        # The record of an outcome that may have sent an SMS, or None: nothing was sent.
        self.done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()


class _LocalRecords:
    """Recorded outcomes kept in this server, oldest first: bounded in number and in time."""

    def __init__(self, limit: int, ttl_s: float) -> None:
        self._limit = limit
        self._ttl_s = ttl_s
        self._records: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[str, bytes] | None:
        found = self._records.get(key)
        if found is None:
            return None
        expires, fingerprint, record = found
        if expires <= now:
            del self._records[key]
            return None
        return fingerprint, record

    def put(
        self, key: str, fingerprint: str, record: bytes, now: float, ttl_s: float | None = None
    ) -> None:
        """Keeps a record `ttl_s` (default: the records' lifetime), never less than it had."""
        expires = now + (self._ttl_s if ttl_s is None else ttl_s)
        kept = self._records.pop(key, None)
        if kept is not None:
            expires = max(expires, kept[0])
        self._records[key] = (expires, fingerprint, record)
        while self._records and (
            len(self._records) > self._limit or next(iter(self._records.values()))[0] <= now
        ):
            self._records.popitem(last=False)


@dataclass(slots=True)
class _Taken:
    """What one send holds in the store, which settling gives back or keeps."""

    holder: str  # names this send's claim and its rate-limit entries
    caller: str
    claim: str | None = None  # the request_id key while this send may hold its claim
    windows: Sequence[Window] = ()  # the windows this send may be counted in
    attempt: SendAttempt = field(default_factory=SendAttempt)
    store_failed: bool = False  # a store failure was let through ("allow")
    step: SendStep | None = None  # the order's step, once it may have prepared something


class SendProtocol:
    """Sends SendCode requests through the store's claims and limits and YunPian."""

    def __init__(
        self,
        store: Store,
        limiter: RateLimiter,
        yunpian: YunpianClient,
        *,
        fingerprints: Fingerprints,
        record_ttl_s: float,
        allow_on_store_error: bool,
        shutdown: Shutdown,
        on_store_failure_allowed: Callable[[], None] | None = None,
        reports: ReportCollection | None = None,
    ) -> None:
        self._store = store
        self._limiter = limiter
        self._yunpian = yunpian
        self._fingerprints = fingerprints
        self._record_ttl_s = record_ttl_s
        self._allow_on_store_error = allow_on_store_error
        self._shutdown = shutdown
        # Called once per send let through despite a store failure (a metric counts them).
        self._on_store_failure_allowed = on_store_failure_allowed
        self._reports = reports
        self._flights: dict[str, _Flight] = {}
        self._local = _LocalRecords(LOCAL_RECORDS, record_ttl_s)
        self._settling: set[asyncio.Task[None]] = set()

    async def send(self, order: SendOrder, time_remaining: float | None) -> Sent:
        """Sends the order's SMS at most once per request_id; raises the ServiceError it ends in."""
        if not order.request_id:
            return _answer(*await self._send(order, None, (), time_remaining))
        loop = asyncio.get_running_loop()
        key = f"{order.caller}\x1f{order.request_id}"
        fingerprints = self._fingerprints.of(order)
        deadline = loop.time() + self._yunpian.budget_s(time_remaining)
        # 1. Coalesce with a send of the same request_id in this server.
        while (flight := self._flights.get(key)) is not None:
            if flight.fingerprint not in fingerprints:
                raise _reused()
            record = await _wait_for(flight, deadline - loop.time())
            if record is not None:
                return _answer(*decode_outcome(record))
            # That send sent nothing: this one is judged afresh (or waits for the next).
        remembered = self._local.get(key, loop.time())
        if remembered is not None:
            if remembered[0] not in fingerprints:
                raise _reused()
            return _answer(*decode_outcome(remembered[1]))
        flight = self._flights[key] = _Flight(fingerprints[0])
        record = None
        try:
            outcome, tag = await self._send(order, key, fingerprints, time_remaining)
            if may_have_sent(outcome):
                record = encode_outcome(outcome, tag)
            return _answer(outcome, tag)
        except ServiceError as error:  # an interrupted send answers as it was recorded
            if may_have_sent(error):
                record = encode_outcome(error, order.step.tag if order.step else "")
            raise
        finally:
            del self._flights[key]
            flight.done.set_result(record)
            if record is not None:
                recent_s = min(RECENT_OUTCOME_S, self._record_ttl_s)
                self._local.put(key, fingerprints[0], record, loop.time(), recent_s)

    async def _send(
        self,
        order: SendOrder,
        key: str | None,
        fingerprints: tuple[str, ...],
        time_remaining: float | None,
    ) -> tuple[Outcome, str]:
        """Steps 2 to 6 for one send; returns its outcome (or a replay) and its tag, raises if
        interrupted."""
        taken = _Taken(holder=new_id(), caller=order.caller)
        try:
            # 2 and 3. Claim the request_id and count the send, or replay its recorded outcome.
            if key is not None:
                replay = await self._claim(order, key, fingerprints, taken, time_remaining)
                if replay is not None:
                    return replay
            else:
                await self._count(order, taken)
            # 4. Prepare the text.
            text, code = order.text, order.code
            if order.step is not None:
                taken.step = order.step  # from here, what it prepared is withdrawn if unsent
                text, code = await order.step.prepare()
            # 5. Call YunPian.
            if self._shutdown.interrupting:
                raise _shutting_down()
            if taken.store_failed and self._on_store_failure_allowed is not None:
                self._on_store_failure_allowed()
            outcome = await self._call_yunpian(order, text, code, taken, time_remaining)
        except ServiceError as refusal:
            outcome = refusal  # nothing was sent
        except Exception:
            # A bug: settled like an interruption, so it cannot turn into a second SMS either.
            _log.exception("send_failed")
            outcome = interrupted_outcome("error") if taken.attempt.connected else _internal()
        except asyncio.CancelledError:
            # Cancelled by the client, its deadline or a shutdown: settle it as far as it got.
            why = "shutdown" if self._shutdown.interrupting else "cancelled"
            outcome = interrupted_outcome(why) if taken.attempt.connected else _shutting_down()
            await self._in_background(self._settle(key, fingerprints, taken, outcome))
            if self._shutdown.absorb_interrupt():
                raise outcome from None
            raise
        # 6. Settle.
        try:
            await self._settle(key, fingerprints, taken, outcome)
        except asyncio.CancelledError:
            await self._in_background(self._settle(key, fingerprints, taken, outcome))
            if self._shutdown.absorb_interrupt():
                return outcome, _tag(taken)
            raise
        return outcome, _tag(taken)

    async def _claim(
        self,
        order: SendOrder,
        key: str,
        fingerprints: tuple[str, ...],
        taken: _Taken,
        time_remaining: float | None,
    ) -> tuple[Outcome, str] | None:
        """Claims the request_id and counts the send (None: go ahead), or returns the recorded
        outcome (and tag) to replay.

        While another server holds it, waits within the call's budget. Raises REQUEST_ID_REUSED
        for a different request, REQUEST_ID_IN_PROGRESS when the wait runs out, RATE_LIMITED
        when a window is full (the claim is then given up by the store).
        """
        loop = asyncio.get_running_loop()
        budget_s = self._yunpian.budget_s(time_remaining)
        deadline = loop.time() + budget_s
        windows = self._limiter.windows(order.phone, order.caller)
        while True:
            # From here until the store answers, the claim may be ours and the send counted.
            taken.claim, taken.windows = key, windows
            try:
                counted = await self._store.claim_and_acquire(
                    key, fingerprints, taken.holder, budget_s + LEASE_MARGIN_S, windows
                )
            except StoreUnavailableError as error:
                # Settling gives back what the store may still have done, if nothing is sent.
                self._excuse(taken, error, "claim")
                return None
            claim = counted.claim
            if claim.state is ClaimState.NEW and counted.refusal is None:
                return None
            taken.claim, taken.windows = None, ()
            if counted.refusal is not None:
                raise self._limiter.refusal_error(counted.refusal, order.phone.masked)
            if claim.state is ClaimState.DONE:
                return decode_outcome(claim.record)
            if claim.state is ClaimState.MISMATCH:
                raise _reused()
            if loop.time() + WAIT_POLL_S >= deadline:
                raise _in_progress()
            await asyncio.sleep(WAIT_POLL_S)

    async def _count(self, order: SendOrder, taken: _Taken) -> None:
        """Counts the send in its windows; raises RATE_LIMITED when one is full."""
        windows = self._limiter.windows(order.phone, order.caller)
        if not windows:
            return
        taken.windows = windows  # from here until the store answers, the slots may be counted
        try:
            refusal = await self._limiter.acquire(windows, taken.holder)
        except StoreUnavailableError as error:
            # The send may still have been counted: settling releases it if nothing is sent.
            self._excuse(taken, error, "acquire")
            return
        if refusal is not None:
            taken.windows = ()
            raise self._limiter.refusal_error(refusal, order.phone.masked)

    async def _call_yunpian(
        self,
        order: SendOrder,
        text: str,
        code: str,
        taken: _Taken,
        time_remaining: float | None,
    ) -> Outcome:
        """The one call to YunPian: its answer, or the error it failed with."""
        try:
            result = await self._yunpian.single_send(
                order.phone.yunpian_mobile,
                text,
                code=code,
                subject=order.phone.masked,
                time_remaining=time_remaining,
                attempt=taken.attempt,
                callback_url=self._reports.callback_url if self._reports else "",
            )
        except ServiceError as error:
            return error
        return pb.SendCodeResponse(
            message_id=result.sid,
            mobile=result.mobile,
            international=order.phone.international,
            segment_count=result.count,
            fee=result.fee,
            fee_unit=result.unit,
        )

    async def _settle(
        self, key: str | None, fingerprints: tuple[str, ...], taken: _Taken, outcome: Outcome
    ) -> None:
        """Records an outcome that may have sent an SMS; else gives back what the send took.

        Runs again from the start if it was interrupted, so every step is idempotent. A store
        failure here never changes the outcome: it is logged (and the record kept locally).
        """
        if may_have_sent(outcome):
            message = self._message(taken.caller, outcome)
            if key is not None:
                record = encode_outcome(outcome, _tag(taken))
                await self._record(key, fingerprints[0], record, message)
            elif message is not None:
                await self._record_message(message)
            return
        if taken.step is not None:
            try:
                await taken.step.withdraw()
            except StoreUnavailableError as error:
                self._store_failed("withdraw", error)
        if taken.windows:
            try:
                await self._limiter.release(taken.windows, taken.holder)
            except StoreUnavailableError as error:
                self._store_failed("release", error)
        if taken.claim is not None:
            try:
                await self._store.release_claim(taken.claim, taken.holder)
            except StoreUnavailableError as error:
                self._store_failed("release_claim", error)

    async def _record(
        self, key: str, fingerprint: str, record: bytes, message: SentMessage | None
    ) -> None:
        now = asyncio.get_running_loop().time()
        if self._allow_on_store_error:
            self._local.put(key, fingerprint, record, now)
        keep_s = self._reports.keep_s if self._reports else 0.0
        try:
            taken_in = await self._store.complete(
                key, fingerprint, record, self._record_ttl_s, message, keep_s
            )
        except StoreUnavailableError as error:
            self._local.put(key, fingerprint, record, now)
            self._store_failed("record", error)
            return
        if taken_in is not None and self._reports is not None:
            self._reports.on_taken_in(taken_in)

    def _message(self, caller: str, outcome: Outcome) -> SentMessage | None:
        """The message an accepted send keeps for its delivery report (if reports are kept)."""
        if self._reports is None or isinstance(outcome, ServiceError) or outcome.replayed:
            return None
        return SentMessage(outcome.message_id, caller, time.time())

    async def _record_message(self, message: SentMessage) -> None:
        assert self._reports is not None
        try:
            taken_in = await self._store.record_message(message, self._reports.keep_s)
        except StoreUnavailableError as error:
            self._store_failed("record_message", error)
            return
        if taken_in is not None:
            self._reports.on_taken_in(taken_in)

    def _excuse(self, taken: _Taken, error: StoreUnavailableError, operation: str) -> None:
        """Lets a store failure pass under "allow"; raises STORE_UNAVAILABLE under "deny"."""
        if not self._allow_on_store_error:
            raise ServiceError(
                Reason.STORE_UNAVAILABLE,
                "The rate-limit store is unavailable; nothing was sent.",
            ) from None
        taken.store_failed = True
        self._store_failed(operation, error)

    def _store_failed(self, operation: str, error: StoreUnavailableError) -> None:
        on_error = "allow" if self._allow_on_store_error else "deny"
        _log.warning("store_unavailable", operation=operation, error=str(error), on_error=on_error)

    async def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` to its end even if this call is cancelled again meanwhile."""
        task = asyncio.create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Waits for settling that outlived its call (the server does before closing the store)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


async def _wait_for(flight: _Flight, budget_s: float) -> bytes | None:
    """The record of a flight, waited for within the budget (REQUEST_ID_IN_PROGRESS after)."""
    try:
        async with asyncio.timeout(max(budget_s, 0.0)):
            return await asyncio.shield(flight.done)
    except TimeoutError:
        raise _in_progress() from None


def _answer(outcome: Outcome, tag: str) -> Sent:
    """What the send answers: the response and its tag, or the error raised."""
    if isinstance(outcome, ServiceError):
        raise outcome
    return Sent(outcome, tag)


def _tag(taken: _Taken) -> str:
    return taken.step.tag if taken.step is not None else ""


def _reused() -> ServiceError:
    return ServiceError(
        Reason.REQUEST_ID_REUSED, "The request_id was already used for a different request."
    )


def _in_progress() -> ServiceError:
    return ServiceError(
        Reason.REQUEST_ID_IN_PROGRESS,
        "A call with this request_id is still in progress; retry with the same id.",
    )


def _internal() -> ServiceError:
    return ServiceError(Reason.INTERNAL_ERROR, "Internal server error; nothing was sent.")


def _shutting_down() -> ServiceError:
    return ServiceError(Reason.SHUTTING_DOWN, "The server is shutting down; retry elsewhere.")

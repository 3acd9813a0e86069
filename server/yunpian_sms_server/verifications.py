"""Verifications: the service makes the code, sends it, and checks what the user typed.

A start is a send: it goes through the send protocol (request_id claim, rate limits, one YunPian
call, settling), whose step opens the caller's pending verification of that number and usage
type (or a new one), makes a code and keeps only its hash before the SMS leaves; if nothing was
sent the hash and the send are withdrawn. A check uses one of the verification's checks in the
store before the code is compared, so parallel guesses on any number of replicas cannot exceed
the limit; the first right code approves it, once.
"""

from __future__ import annotations

import asyncio
import string
import time
from dataclasses import dataclass
from typing import Final

import structlog

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.config import VerifyConfig
from yunpian_sms_server.errors import Reason, ServiceError, invalid_argument
from yunpian_sms_server.phone import PhoneNumber
from yunpian_sms_server.send_protocol import SendOrder, SendProtocol
from yunpian_sms_server.shutdown import Shutdown
from yunpian_sms_server.stores import CheckUse, CodeAdded, Store, store_required
from yunpian_sms_server.templates import render
from yunpian_sms_server.verification_codes import check_typed_code, new_code
from yunpian_sms_server.verification_state import (
    ID_PREFIX,
    CodeHasher,
    VerificationState,
    VerificationStatus,
    new_verification_id,
)

# A verification id is ID_PREFIX and base64url characters; anything longer is not one of ours.
MAX_VERIFICATION_ID_LENGTH: Final = 64
_ID_CHARACTERS: Final = frozenset(string.ascii_letters + string.digits + "_-")
# A start that finds its verification ended between opening it and adding a code opens again.
_OPEN_ATTEMPTS: Final = 2
_ENDED_REASONS: Final = {
    VerificationStatus.EXPIRED: Reason.VERIFICATION_EXPIRED,
    VerificationStatus.CANCELED: Reason.VERIFICATION_CANCELED,
    VerificationStatus.APPROVED: Reason.VERIFICATION_APPROVED,
    VerificationStatus.MAX_ATTEMPTS_REACHED: Reason.VERIFICATION_MAX_ATTEMPTS,
}
_ENDED_MESSAGES: Final = {
    VerificationStatus.EXPIRED: "The verification has expired; start a new one.",
    VerificationStatus.CANCELED: "The verification was canceled; start a new one.",
    VerificationStatus.APPROVED: "The verification was already approved; a code works once.",
    VerificationStatus.MAX_ATTEMPTS_REACHED: (
        "The verification has used all its checks; start a new one."
    ),
}

_log = structlog.get_logger("yunpian_sms.verifications")


@dataclass(frozen=True, slots=True)
class Started:
    """A verification after a start: `replayed` when answered from the request_id's record;
    `sent` is the SMS's answer (None for a replay of a verification since forgotten)."""

    state: VerificationState
    replayed: bool
    sent: pb.SendCodeResponse | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """A verification after a check, and whether the code was right."""

    state: VerificationState
    approved: bool
    expired_now: bool = False  # this check found its time had passed


def _log_unheard_failure(task: asyncio.Task[tuple[CheckUse, VerificationState | None]]) -> None:
    """Logs a check the store failed after its call was cancelled: nobody else hears of it."""
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.warning("verification_check_failed", error=type(error).__name__)


def pending_key(caller: str, phone: PhoneNumber, usage_type: str) -> str:
    """Names the one pending verification a caller may have per number and usage type."""
    return f"{caller}\x1f{phone.yunpian_mobile}\x1f{usage_type}"


def check_verification_id(verification_id: str) -> None:
    """Raises INVALID_VERIFICATION_ID unless it can be an id the service made."""
    if not (
        verification_id.startswith(ID_PREFIX)
        and len(verification_id) <= MAX_VERIFICATION_ID_LENGTH
        and _ID_CHARACTERS.issuperset(verification_id[len(ID_PREFIX) :])
    ):
        raise invalid_argument(
            Reason.INVALID_VERIFICATION_ID,
            "verification_id",
            f"The verification_id must be an id StartVerification returned ({ID_PREFIX}…).",
        )


def not_found() -> ServiceError:
    return ServiceError(
        Reason.VERIFICATION_NOT_FOUND, "No such verification of this caller; start one."
    )


def ended(state: VerificationState) -> ServiceError:
    """The error of a check on a verification that has ended."""
    return ServiceError(
        _ENDED_REASONS[state.status],
        _ENDED_MESSAGES[state.status],
        metadata={"verification_id": state.verification_id, "status": state.status.value},
    )


class _StartStep:
    """The send step of a start: opens the verification, makes a code, keeps only its hash."""

    def __init__(
        self,
        store: Store,
        config: VerifyConfig,
        hasher: CodeHasher,
        key: str,
        fresh: VerificationState,
        template: str,
    ) -> None:
        self._store = store
        self._config = config
        self._hasher = hasher
        self._key = key
        self._fresh = fresh
        self._template = template
        self._code_hash = ""
        self.tag = ""  # the verification's id, once prepared
        self.state: VerificationState | None = None

    async def prepare(self) -> tuple[str, str]:
        """A code for the pending verification, its hash kept before it leaves; the SMS text
        and the code."""
        with store_required("nothing was sent"):
            return await self._prepare()

    async def _prepare(self) -> tuple[str, str]:
        config, keep_s = self._config, self._config.code_ttl_seconds
        for _ in range(_OPEN_ATTEMPTS):
            state = await self._store.open_verification(
                self._key, self._fresh, config.code_ttl_seconds, keep_s
            )
            code = new_code(config.code_length)
            code_hash = self._hasher.hash(state.verification_id, code)
            added, after = await self._store.add_verification_code(
                state.verification_id, code_hash, config.max_sends, keep_s
            )
            if added is CodeAdded.SEND_LIMIT and after is not None:
                raise ServiceError(
                    Reason.VERIFICATION_SEND_LIMIT,
                    f"The verification has had its {config.max_sends} SMS; wait until it "
                    "expires to start a new one.",
                    metadata={"verification_id": state.verification_id},
                    retry_after_s=max(after.expires_at - time.time(), 0.0),
                )
            if added is CodeAdded.ADDED and after is not None:
                self.tag, self.state, self._code_hash = after.verification_id, after, code_hash
                return render(self._template, code), code
        raise ServiceError(
            Reason.VERIFICATION_NOT_FOUND,
            "The verification ended while a code was made for it; start again.",
        )

    async def withdraw(self) -> None:
        """Nothing was sent: the code's hash and its send are forgotten."""
        if self._code_hash:
            await self._store.withdraw_verification_code(self.tag, self._code_hash)


class Verifications:
    """Starts, checks and cancels verifications in a store, sending through the send protocol."""

    def __init__(
        self,
        store: Store,
        sending: SendProtocol,
        config: VerifyConfig,
        hasher: CodeHasher,
        shutdown: Shutdown,
    ) -> None:
        self.store = store
        self._sending = sending
        self._shutdown = shutdown
        self._config = config
        self._hasher = hasher
        self._checking: set[asyncio.Task[tuple[CheckUse, VerificationState | None]]] = set()

    @property
    def code_length(self) -> int:
        """Digits of the codes it makes (and so of the codes it checks)."""
        return self._config.code_length

    @property
    def _keep_s(self) -> float:
        """How long an ended verification is kept (status only)."""
        return self._config.code_ttl_seconds

    async def start(
        self,
        *,
        caller: str,
        phone: PhoneNumber,
        usage_type: str,
        template: str,
        request_id: str,
        time_remaining: float | None,
    ) -> Started:
        """Sends a code for the caller's pending verification (or a new one)."""
        fresh = VerificationState(
            verification_id=new_verification_id(),
            caller=caller,
            phone=phone.yunpian_mobile,
            usage_type=usage_type,
            status=VerificationStatus.PENDING,
            expires_at=0.0,  # the store sets it
            max_checks=self._config.max_checks,
        )
        key = pending_key(caller, phone, usage_type)
        step = _StartStep(self.store, self._config, self._hasher, key, fresh, template)
        order = SendOrder(
            caller=caller,
            phone=phone,
            usage_type=usage_type,
            code="",
            text="",
            request_id=request_id,
            step=step,
        )
        sent = await self._sending.send(order, time_remaining)
        if sent.response.replayed:
            with store_required("nothing was sent; the verification could not be read"):
                state = await self.store.get_verification(sent.tag, self._keep_s)
            if state is None:  # forgotten since: the request_id outlived it
                raise not_found()
            return Started(state, replayed=True, sent=sent.response)
        assert step.state is not None  # prepared: it was sent
        state = step.state
        state.message_id = sent.response.message_id
        await self._note_message(state.verification_id, state.message_id)
        return Started(state, replayed=False, sent=sent.response)

    async def _note_message(self, verification_id: str, message_id: str) -> None:
        try:
            await self.store.note_verification_message(verification_id, message_id)
        except Exception:  # the SMS is sent: only the verification's message id is missing
            _log.warning("verification_message_not_noted", verification_id=verification_id)

    async def find(self, caller: str, phone: PhoneNumber, usage_type: str) -> str:
        """The id of the caller's pending verification of the number and usage type."""
        with store_required("nothing was checked"):
            found = await self.store.find_pending_verification(
                pending_key(caller, phone, usage_type)
            )
        if found is None:
            raise not_found()
        return found

    async def check(self, caller: str, verification_id: str, code: str) -> Checked:
        """Uses one check and compares the code, in one step of the store: approves (once) or
        counts a wrong guess, the last ending the verification. A check begun is finished even
        if its call is cancelled meanwhile (its client gave up): the store decides it whole."""
        check_typed_code(code, self._config.code_length)
        candidates = self._hasher.candidates(verification_id, code)
        task = asyncio.ensure_future(
            self.store.use_verification_check(verification_id, caller, candidates, self._keep_s)
        )
        self._checking.add(task)
        task.add_done_callback(self._checked)
        with store_required("the code was not checked"):
            use, state = await self._decided(task)
        if use is CheckUse.UNKNOWN or state is None:
            raise not_found()
        if use is CheckUse.EXPIRED_NOW:
            return Checked(state, approved=False, expired_now=True)
        if use is CheckUse.ENDED:
            raise ended(state)
        return Checked(state, approved=use is CheckUse.APPROVED)

    async def _decided(
        self, task: asyncio.Task[tuple[CheckUse, VerificationState | None]]
    ) -> tuple[CheckUse, VerificationState | None]:
        """What the store decided of a check, even if the call is cancelled meanwhile: its
        client then hears nothing, unless a shutdown interrupted it (it hears the decision)."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._shutdown.absorb_interrupt():
                return await task
            task.add_done_callback(_log_unheard_failure)
            raise

    def _checked(self, task: asyncio.Task[tuple[CheckUse, VerificationState | None]]) -> None:
        self._checking.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the call raises it, or _log_unheard_failure logs it

    async def drain(self) -> None:
        """Waits for the checks whose calls were cancelled to be decided."""
        if self._checking:
            await asyncio.gather(*self._checking, return_exceptions=True)

    async def cancel(self, caller: str, verification_id: str) -> tuple[VerificationState, bool]:
        """Cancels the caller's pending verification; (its state, whether this call ended it)."""
        with store_required("nothing was canceled"):
            state = await self.store.get_verification(verification_id, self._keep_s)
            if state is None or state.caller != caller:
                raise not_found()
            if state.status is not VerificationStatus.PENDING:
                return state, False
            after, canceled = await self.store.end_verification(
                verification_id, VerificationStatus.CANCELED, self._keep_s
            )
            if after is None:
                raise not_found()
            return after, canceled

"""The store of a single replica: plain dictionaries, atomic because nothing awaits inside."""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import hmac
import struct
import time
from collections.abc import Sequence
from typing import Final

from yunpian_sms_server.delivery_state import (
    EARLY_REPORT_S,
    MAX_EARLY_REPORTS,
    DeliveryReport,
    DeliveryState,
    SentMessage,
)
from yunpian_sms_server.limits import Window
from yunpian_sms_server.stores.interface import (
    CheckUse,
    Claim,
    ClaimCounted,
    ClaimState,
    CodeAdded,
    Refusal,
    SavedReports,
)
from yunpian_sms_server.verification_state import VerificationState, VerificationStatus

# The in-memory store forgets expired idempotency records at most this often (claim() never
# answers from an expired one).
RECORD_SWEEP_INTERVAL_S: Final = 1.0
# A stored idempotency record in memory starts with its expiry and its fingerprint's length.
_RECORD_HEAD: Final = struct.Struct("<dH")


class MemoryStore:
    """The store of a single replica: plain dictionaries, atomic because nothing awaits inside.

    One log per subject ("phone:+8613800138000") serves all of its windows: each limit counts
    the entries newer than its period. Logs and leases expire through heaps ordered by expiry,
    so the cost of forgetting is paid only for what has expired. Stored outcomes, one per
    request_id for a day, are the bulk of the memory: each is one bytes object, and they are
    forgotten in the order they were stored (with one TTL, the order they expire).
    """

    def __init__(self) -> None:
        # subject -> [(time, token)], oldest first, kept for the subject's longest period.
        self._logs: dict[str, list[tuple[float, str]]] = {}
        self._log_expiry: list[tuple[float, float, str]] = []  # (expires, keep_s, subject)
        # Claims of calls in progress: key -> (expires, fingerprint, holder).
        self._leases: dict[str, tuple[float, str, str]] = {}
        self._lease_expiry: list[tuple[float, str]] = []  # (expires, key)
        # Completed claims: key -> _RECORD_HEAD + fingerprint + record, oldest first.
        self._records: dict[str, bytes] = {}
        self._records_swept_at = 0.0
        self._verifications = _Verifications()
        self._messages = _Messages()
        # Named leases (the delivery report puller's): name -> (holder, expires).
        self._named_leases: dict[str, tuple[str, float]] = {}

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _forget_expired(self, now: float) -> None:
        logs, expiry = self._logs, self._log_expiry
        while expiry and expiry[0][0] <= now:
            _, keep_s, subject = heapq.heappop(expiry)
            entries = logs.get(subject)
            if entries and entries[-1][0] > now - keep_s:
                heapq.heappush(expiry, (entries[-1][0] + keep_s, keep_s, subject))
            else:
                logs.pop(subject, None)
        leases, lease_expiry = self._leases, self._lease_expiry
        while lease_expiry and lease_expiry[0][0] <= now:
            _, key = heapq.heappop(lease_expiry)
            held = leases.get(key)
            if held is not None and held[0] <= now:
                del leases[key]
        if now - self._records_swept_at >= RECORD_SWEEP_INTERVAL_S:
            # In batches: a pass from the front of a dict also walks the slots freed before it.
            self._records_swept_at = now
            expired = []
            for key, packed in self._records.items():
                if _RECORD_HEAD.unpack_from(packed)[0] > now:
                    break  # a record with a longer TTL may hold back others: claim() checks
                expired.append(key)
            for key in expired:
                del self._records[key]

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        now = self._now()
        self._forget_expired(now)
        logs = self._logs
        refusal: Refusal | None = None
        # Each subject's log is kept for the longest period of its windows.
        keep: dict[str, float] = {}
        for window in windows:
            subject, limit = window.subject_key, window.limit
            if keep.get(subject, 0.0) < limit.period_s:
                keep[subject] = limit.period_s
            entries = logs.get(subject)
            if not entries or len(entries) < limit.count:
                continue
            blocking = entries[len(entries) - limit.count][0]
            wait = blocking + limit.period_s - now
            if wait > 0 and (refusal is None or wait > refusal.retry_after_s):
                refusal = Refusal(window, wait)
        if refusal is not None:
            return refusal
        for subject, keep_s in keep.items():
            entries = logs.get(subject)
            if entries is None:
                logs[subject] = [(now, token)]
                heapq.heappush(self._log_expiry, (now + keep_s, keep_s, subject))
                continue
            horizon = now - keep_s
            if entries and entries[0][0] <= horizon:
                # Usually one entry has aged out since the last send: no search for it.
                if len(entries) == 1 or entries[1][0] > horizon:
                    del entries[0]
                else:
                    del entries[: bisect.bisect_right(entries, horizon, key=_entry_time)]
            entries.append((now, token))
        return None

    async def release(self, windows: Sequence[Window], token: str) -> None:
        for subject in {window.subject_key for window in windows}:
            entries = self._logs.get(subject)
            if entries is not None:
                entries[:] = [entry for entry in entries if entry[1] != token]

    async def claim(
        self, key: str, fingerprints: Sequence[str], holder: str, lease_s: float
    ) -> Claim:
        now = self._now()
        self._forget_expired(now)
        packed = self._records.get(key)
        if packed is not None:
            expires, fingerprint_size = _RECORD_HEAD.unpack_from(packed)
            if expires > now:
                start = _RECORD_HEAD.size + fingerprint_size
                if packed[_RECORD_HEAD.size : start].decode() not in fingerprints:
                    return Claim(ClaimState.MISMATCH)
                return Claim(ClaimState.DONE, packed[start:])
            del self._records[key]
        held = self._leases.get(key)
        if held is None or held[0] <= now:
            self._leases[key] = (now + lease_s, fingerprints[0], holder)
            heapq.heappush(self._lease_expiry, (now + lease_s, key))
            return Claim(ClaimState.NEW)
        if held[1] not in fingerprints:
            return Claim(ClaimState.MISMATCH)
        return Claim(ClaimState.PENDING)

    async def claim_and_acquire(
        self,
        key: str,
        fingerprints: Sequence[str],
        holder: str,
        lease_s: float,
        windows: Sequence[Window],
    ) -> ClaimCounted:
        # Nothing awaits in claim, acquire or release_claim here: together they are atomic.
        claim = await self.claim(key, fingerprints, holder, lease_s)
        if claim.state is not ClaimState.NEW:
            return ClaimCounted(claim)
        refusal = await self.acquire(windows, holder)
        if refusal is not None:
            await self.release_claim(key, holder)
        return ClaimCounted(claim, refusal)

    async def complete(
        self,
        key: str,
        fingerprint: str,
        record: bytes,
        ttl_s: float,
        message: SentMessage | None = None,
        message_keep_s: float = 0.0,
    ) -> SentMessage | None:
        taken_in = None if message is None else self._messages.record(message, message_keep_s)
        self._leases.pop(key, None)
        self._records.pop(key, None)  # stored again: to the end, in expiry order
        encoded = fingerprint.encode()
        head = _RECORD_HEAD.pack(self._now() + ttl_s, len(encoded))
        self._records[key] = head + encoded + record
        return taken_in

    async def release_claim(self, key: str, holder: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[2] == holder:
            del self._leases[key]

    async def record_message(self, message: SentMessage, keep_s: float) -> SentMessage | None:
        return self._messages.record(message, keep_s)

    async def save_reports(self, reports: Sequence[DeliveryReport], keep_s: float) -> SavedReports:
        return self._messages.save(reports)

    async def get_message(self, message_id: str) -> SentMessage | None:
        return self._messages.get(message_id)

    async def take_lease(self, name: str, holder: str, lease_s: float) -> bool:
        now = self._now()
        held = self._named_leases.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self._named_leases[name] = (holder, now + lease_s)
        return True

    async def give_up_lease(self, name: str, holder: str) -> None:
        held = self._named_leases.get(name)
        if held is not None and held[0] == holder:
            del self._named_leases[name]

    async def open_verification(
        self, pending_key: str, fresh: VerificationState, ttl_s: float, keep_s: float
    ) -> VerificationState:
        return self._verifications.open(pending_key, fresh, ttl_s, keep_s)

    async def add_verification_code(
        self, verification_id: str, code_hash: str, max_sends: int, keep_s: float
    ) -> tuple[CodeAdded, VerificationState | None]:
        return self._verifications.add_code(verification_id, code_hash, max_sends, keep_s)

    async def withdraw_verification_code(self, verification_id: str, code_hash: str) -> None:
        self._verifications.withdraw_code(verification_id, code_hash)

    async def note_verification_message(self, verification_id: str, message_id: str) -> None:
        found = self._verifications.get(verification_id)
        if found is not None:
            found.message_id = message_id

    async def find_pending_verification(self, pending_key: str) -> str | None:
        return self._verifications.find_pending(pending_key)

    async def use_verification_check(
        self, verification_id: str, caller: str, code_hashes: Sequence[str], keep_s: float
    ) -> tuple[CheckUse, VerificationState | None]:
        return self._verifications.use_check(verification_id, caller, code_hashes, keep_s)

    async def end_verification(
        self, verification_id: str, status: VerificationStatus, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        return self._verifications.end(verification_id, status, keep_s)

    async def get_verification(
        self, verification_id: str, keep_s: float
    ) -> VerificationState | None:
        return self._verifications.current(verification_id, keep_s)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._verifications = _Verifications()
        self._messages = _Messages()
        self._named_leases.clear()
        self._logs.clear()
        self._log_expiry.clear()
        self._leases.clear()
        self._lease_expiry.clear()
        self._records.clear()


def _entry_time(entry: tuple[float, str]) -> float:
    return entry[0]


class _Verifications:
    """Verifications of the memory store: by id, the pending one per key, forgotten in time.

    The states handed out are copies: a caller cannot change the store's without an operation.
    """

    def __init__(self) -> None:
        self._states: dict[str, VerificationState] = {}
        self._pending: dict[str, str] = {}  # pending key -> id
        self._keys: dict[str, str] = {}  # id -> its pending key
        self._forget_at: dict[str, float] = {}  # id -> when it is forgotten
        self._forgetting: list[tuple[float, str]] = []  # (when, id), a heap

    @staticmethod
    def _now() -> float:
        return time.time()

    def _forget_gone(self, now: float) -> None:
        forgetting = self._forgetting
        while forgetting and forgetting[0][0] <= now:
            _, verification_id = heapq.heappop(forgetting)
            if self._forget_at.get(verification_id, now + 1) <= now:
                self._drop(verification_id)

    def _drop(self, verification_id: str) -> None:
        del self._states[verification_id], self._forget_at[verification_id]
        key = self._keys.pop(verification_id)
        if self._pending.get(key) == verification_id:
            del self._pending[key]

    def _keep_until(self, verification_id: str, when: float) -> None:
        self._forget_at[verification_id] = when
        heapq.heappush(self._forgetting, (when, verification_id))

    def _live(self, verification_id: str, keep_s: float) -> VerificationState | None:
        """The stored state, ended as expired when its time has passed."""
        return self._live_and_expired(verification_id, keep_s)[0]

    def _live_and_expired(
        self, verification_id: str, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        """The stored state, and whether it was ended as expired just now."""
        now = self._now()
        self._forget_gone(now)
        state = self._states.get(verification_id)
        expired = state is not None and now >= state.expires_at
        if state is not None and expired and state.status is VerificationStatus.PENDING:
            self._end(state, VerificationStatus.EXPIRED, state.expires_at + keep_s)
            return state, True
        return state, False

    def _end(self, state: VerificationState, status: VerificationStatus, keep_until: float) -> None:
        state.status = status
        state.code_hashes = ()
        key = self._keys[state.verification_id]
        if self._pending.get(key) == state.verification_id:
            del self._pending[key]
        self._keep_until(state.verification_id, keep_until)

    def open(
        self, pending_key: str, fresh: VerificationState, ttl_s: float, keep_s: float
    ) -> VerificationState:
        found = self._pending.get(pending_key)
        if found is not None:
            state = self._live(found, keep_s)
            if state is not None and state.status is VerificationStatus.PENDING:
                return _copy(state)
        state = _copy(fresh)
        state.expires_at = self._now() + ttl_s
        self._states[state.verification_id] = state
        self._pending[pending_key] = state.verification_id
        self._keys[state.verification_id] = pending_key
        self._keep_until(state.verification_id, state.expires_at + keep_s)
        return _copy(state)

    def add_code(
        self, verification_id: str, code_hash: str, max_sends: int, keep_s: float
    ) -> tuple[CodeAdded, VerificationState | None]:
        state = self._live(verification_id, keep_s)
        if state is None or state.status is not VerificationStatus.PENDING:
            return CodeAdded.ENDED, _copy_or_none(state)
        if state.send_count >= max_sends:
            return CodeAdded.SEND_LIMIT, _copy(state)
        state.send_count += 1
        state.code_hashes = (*state.code_hashes, code_hash)
        return CodeAdded.ADDED, _copy(state)

    def withdraw_code(self, verification_id: str, code_hash: str) -> None:
        state = self._states.get(verification_id)
        if state is not None and code_hash in state.code_hashes:
            state.code_hashes = tuple(h for h in state.code_hashes if h != code_hash)
            state.send_count -= 1

    def get(self, verification_id: str) -> VerificationState | None:
        return self._states.get(verification_id)

    def find_pending(self, pending_key: str) -> str | None:
        """The pending verification's id: not one past its expiry that nothing has looked at
        since (as in Redis, where the pending key expires with it)."""
        found = self._pending.get(pending_key)
        state = None if found is None else self._states.get(found)
        if (
            state is None
            or state.status is not VerificationStatus.PENDING
            or self._now() >= state.expires_at
        ):
            return None
        return found

    def use_check(
        self, verification_id: str, caller: str, code_hashes: Sequence[str], keep_s: float
    ) -> tuple[CheckUse, VerificationState | None]:
        found = self._states.get(verification_id)
        if found is None or found.caller != caller:
            return CheckUse.UNKNOWN, None
        state, expired_now = self._live_and_expired(verification_id, keep_s)
        if state is None:
            return CheckUse.UNKNOWN, None
        if expired_now:
            return CheckUse.EXPIRED_NOW, _copy(state)
        if state.status is not VerificationStatus.PENDING:
            return CheckUse.ENDED, _copy(state)
        state.checks_used += 1
        # Every typed hash is compared with every stored one, whatever matches first.
        right = False
        for typed in code_hashes:
            for stored in state.code_hashes:
                right |= hmac.compare_digest(typed.encode(), stored.encode())
        if right:
            self._end(state, VerificationStatus.APPROVED, self._now() + keep_s)
            return CheckUse.APPROVED, _copy(state)
        if state.checks_used >= state.max_checks:
            self._end(state, VerificationStatus.MAX_ATTEMPTS_REACHED, self._now() + keep_s)
        return CheckUse.WRONG, _copy(state)

    def end(
        self, verification_id: str, status: VerificationStatus, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        state = self._live(verification_id, keep_s)
        if state is not None and state.status is VerificationStatus.PENDING:
            self._end(state, status, self._now() + keep_s)
            return _copy(state), True
        return _copy_or_none(state), False

    def current(self, verification_id: str, keep_s: float) -> VerificationState | None:
        return _copy_or_none(self._live(verification_id, keep_s))


def _copy(state: VerificationState) -> VerificationState:
    return dataclasses.replace(state)


def _copy_or_none(state: VerificationState | None) -> VerificationState | None:
    return None if state is None else _copy(state)


class _Messages:
    """Messages sent, for their delivery reports: by id, forgotten in the order they expire; and
    reports that came before their message was recorded, waiting EARLY_REPORT_S for it."""

    def __init__(self) -> None:
        self._messages: dict[str, SentMessage] = {}
        self._early: dict[str, DeliveryReport] = {}
        # When each entry (message id, whether it is an early report) is forgotten, and the
        # same as a heap of (when, message id, early): an entry popped whose time is not its
        # own any more was stored again since.
        self._until: dict[tuple[str, bool], float] = {}
        self._forgetting: list[tuple[float, str, bool]] = []

    def _forget_gone(self, now: float) -> None:
        while self._forgetting and self._forgetting[0][0] <= now:
            when, message_id, early = heapq.heappop(self._forgetting)
            if self._until.get((message_id, early)) == when:
                del self._until[message_id, early]
                (self._early if early else self._messages).pop(message_id, None)

    def _keep(self, message_id: str, early: bool, until: float) -> None:
        self._until[message_id, early] = until
        heapq.heappush(self._forgetting, (until, message_id, early))

    def record(self, message: SentMessage, keep_s: float) -> SentMessage | None:
        now = time.time()
        self._forget_gone(now)
        if message.message_id in self._messages:
            return None  # recorded already (a settle can run twice)
        kept = self._messages[message.message_id] = dataclasses.replace(message)
        self._keep(message.message_id, False, now + keep_s)
        report = self._early.pop(message.message_id, None)
        if report is None:
            return None
        self._until.pop((message.message_id, True), None)
        _apply(kept, report)
        return dataclasses.replace(kept)

    def save(self, reports: Sequence[DeliveryReport]) -> SavedReports:
        now = time.time()
        self._forget_gone(now)
        saved: list[SentMessage] = []
        duplicates = unknown = 0
        for report in reports:
            message = self._messages.get(report.message_id)
            if message is None:
                unknown += 1
                if report.message_id not in self._early and len(self._early) < MAX_EARLY_REPORTS:
                    self._early[report.message_id] = report  # the first report waits
                    self._keep(report.message_id, True, now + EARLY_REPORT_S)
            elif message.state is not DeliveryState.PENDING:
                duplicates += 1
            else:
                _apply(message, report)
                saved.append(dataclasses.replace(message))
        return SavedReports(tuple(saved), duplicates, unknown)

    def get(self, message_id: str) -> SentMessage | None:
        self._forget_gone(time.time())
        found = self._messages.get(message_id)
        return None if found is None else dataclasses.replace(found)


def _apply(message: SentMessage, report: DeliveryReport) -> None:
    """A message as its report says it ended."""
    message.state = report.state
    message.carrier_code, message.carrier_detail = report.carrier_code, report.carrier_detail
    message.received_at = report.received_at

"""What a store offers: shared state of rate limits, idempotency and verifications, each
operation atomic across every replica using it (memory_store.py, redis_store.py).

Both stores offer the same few atomic operations. Rate limits are sliding-window logs: each
accepted call adds a token to every window it counts in, so the wait until a slot frees is exact,
and a call that sent nothing can take its token back. Idempotency records move from PENDING (a
call, the lease's holder, has the request_id) to DONE (its outcome is stored) or are released by
their holder. A request_id is compared by fingerprint; a claim names every fingerprint the
request may have been stored under (the secret that keys them can be rotated).

The Redis store runs at most `max_connections` operations at once and queues the rest: a burst
is slower, never a store failure. The queue is bounded by each caller's own deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

from yunpian_sms_server.delivery_state import DeliveryReport, SentMessage
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.limits import Window
from yunpian_sms_server.verification_state import VerificationState, VerificationStatus

# Keys of everything a store keeps, in Redis, start with this.
KEY_PREFIX: Final = "yunpian-sms:"
# Redis operations (and so connections) in flight at once unless configured; more wait their turn.
DEFAULT_MAX_CONNECTIONS: Final = 64


class StoreUnavailableError(Exception):
    """The store could not be reached or failed; the caller applies store.on_error."""


@contextlib.contextmanager
def store_required(what: str) -> Iterator[None]:
    """Turns a store failure into UNAVAILABLE STORE_UNAVAILABLE: `what` (a sentence's end, such
    as "nothing was checked") cannot be done without the store, whatever store.on_error says."""
    try:
        yield
    except StoreUnavailableError:
        raise ServiceError(
            Reason.STORE_UNAVAILABLE, f"The store is unavailable; {what}. Retry later."
        ) from None


@dataclass(frozen=True, slots=True)
class Refusal:
    """The window that is full, and how long until it has a free slot."""

    window: Window
    retry_after_s: float


class ClaimState(Enum):
    NEW = "new"  # the caller now holds the request_id and must complete or release it
    PENDING = "pending"  # another call holds it
    DONE = "done"  # an outcome is stored: `record`
    MISMATCH = "mismatch"  # the request_id was used for a different request


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    record: bytes = b""


@dataclass(frozen=True, slots=True)
class ClaimCounted:
    """A claim and, when it is new, whether its send was counted: a `refusal` says which window
    was full; the claim was then given up at once (nothing will be sent)."""

    claim: Claim
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class SavedReports:
    """What saving a batch of delivery reports came to."""

    saved: tuple[SentMessage, ...] = ()  # the messages as they are now
    duplicates: int = 0  # reports of messages that had one already
    # Reports of messages this service does not know (yet): each waits a while for its message
    # to be recorded (a report can come first), then is dropped.
    unknown: int = 0


class CodeAdded(Enum):
    """What adding a code to a verification came to."""

    ADDED = "added"  # the code's hash is kept and the send counted
    SEND_LIMIT = "send_limit"  # max_sends SMS were sent already
    ENDED = "ended"  # the verification is no longer pending (or unknown)


class CheckUse(Enum):
    """What one check of a verification came to (decided in one atomic step)."""

    APPROVED = "approved"  # the code was right: this check approved it (and ended it)
    WRONG = "wrong"  # a wrong code used one check (the last check ends it, MAX_ATTEMPTS_REACHED)
    ENDED = "ended"  # the verification is no longer pending: nothing used
    EXPIRED_NOW = "expired_now"  # its time had passed: this call ended it as expired
    UNKNOWN = "unknown"  # no such verification of this caller


class Store(Protocol):
    """The operations the service needs, each atomic across every replica using the store."""

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        """Counts `token` in every window if all have room; else counts nothing and says why."""
        ...

    async def release(self, windows: Sequence[Window], token: str) -> None:
        """Takes a token back from its windows (the call sent nothing)."""
        ...

    async def claim(
        self, key: str, fingerprints: Sequence[str], holder: str, lease_s: float
    ) -> Claim:
        """Claims a request_id for `holder` for `lease_s` seconds, or says who has it and how.

        The request is the same as the stored one when the stored fingerprint is any of
        `fingerprints`; a new claim stores the first.
        """
        ...

    async def claim_and_acquire(
        self,
        key: str,
        fingerprints: Sequence[str],
        holder: str,
        lease_s: float,
        windows: Sequence[Window],
    ) -> ClaimCounted:
        """`claim`, and when the claim is new, `acquire` with `holder` as the token, atomically
        (one round trip): a send with a request_id is claimed and counted, or neither."""
        ...

    async def complete(
        self,
        key: str,
        fingerprint: str,
        record: bytes,
        ttl_s: float,
        message: SentMessage | None = None,
        message_keep_s: float = 0.0,
    ) -> SentMessage | None:
        """Stores the outcome of a request_id for `ttl_s` seconds, whoever holds its claim (and,
        in the same operation, the message sent, as `record_message` does: what that returns,
        None without a message)."""
        ...

    async def record_message(self, message: SentMessage, keep_s: float) -> SentMessage | None:
        """Keeps a message sent, for its delivery report, `keep_s` seconds (once: recording it
        again changes nothing). A report of it that came first is taken in: the message as that
        report says it ended is returned, else None."""
        ...

    async def save_reports(self, reports: Sequence[DeliveryReport], keep_s: float) -> SavedReports:
        """Saves delivery reports of pending messages; a message's first report wins."""
        ...

    async def get_message(self, message_id: str) -> SentMessage | None:
        """The message as kept (None: unknown or forgotten)."""
        ...

    async def take_lease(self, name: str, holder: str, lease_s: float) -> bool:
        """Takes (or renews) the lease `name` for `holder` for `lease_s` seconds; False when
        another holder has it."""
        ...

    async def give_up_lease(self, name: str, holder: str) -> None:
        """Lets go of `holder`'s lease at once (another can take it)."""
        ...

    async def release_claim(self, key: str, holder: str) -> None:
        """Gives up `holder`'s claim without an outcome (a retry is judged afresh); a claim of
        another holder, or a stored outcome, is left as it is."""
        ...

    async def open_verification(
        self, pending_key: str, fresh: VerificationState, ttl_s: float, keep_s: float
    ) -> VerificationState:
        """The pending verification of `pending_key` (a caller, number and usage type); if there
        is none, `fresh`, stored from now on and expiring `ttl_s` after now (the store's clock).

        An ended verification is kept (status only) for `keep_s` seconds after its end.
        """
        ...

    async def add_verification_code(
        self, verification_id: str, code_hash: str, max_sends: int, keep_s: float
    ) -> tuple[CodeAdded, VerificationState | None]:
        """Keeps a code's hash and counts its send, unless max_sends were sent or it ended."""
        ...

    async def withdraw_verification_code(self, verification_id: str, code_hash: str) -> None:
        """Forgets a code that was never sent, and its send."""
        ...

    async def note_verification_message(self, verification_id: str, message_id: str) -> None:
        """Notes the message id of the verification's latest SMS."""
        ...

    async def find_pending_verification(self, pending_key: str) -> str | None:
        """The id of the pending verification of `pending_key`, if any."""
        ...

    async def use_verification_check(
        self, verification_id: str, caller: str, code_hashes: Sequence[str], keep_s: float
    ) -> tuple[CheckUse, VerificationState | None]:
        """Checks a code of the caller's pending verification in one step: uses one check, and
        approves it if one of `code_hashes` (the typed code's hash under each secret) is a hash
        of a code sent, or ends it as MAX_ATTEMPTS_REACHED if that was its last check. Of checks
        racing, each is counted in turn and only the right one counted first approves. Ends it
        as expired if its time has passed. UNKNOWN (and None) for an unknown id or another
        caller's verification: nothing is used."""
        ...

    async def end_verification(
        self, verification_id: str, status: VerificationStatus, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        """Ends a pending verification with `status` (its code hashes forgotten); an ended one
        is left as it is. Returns the state after, and whether this call ended it: of calls
        racing to end one verification, exactly one is told it did. (None, False) for an
        unknown id."""
        ...

    async def get_verification(
        self, verification_id: str, keep_s: float
    ) -> VerificationState | None:
        """The verification (ended as expired if its time has passed); None if unknown."""
        ...

    async def ping(self) -> None:
        """Raises StoreUnavailableError when the store cannot serve."""
        ...

    async def close(self) -> None: ...

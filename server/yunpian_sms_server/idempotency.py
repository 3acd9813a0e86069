"""Idempotent SendCode (design.md §7): a request_id's outcome is stored, replayed, never resent.

Only outcomes in which an SMS was or may have been sent are stored (OK, and errors with
delivery=unknown); any other outcome releases the request_id so a retry is judged afresh.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import Final

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.stores import ClaimState, Store

# How often a duplicate checks whether the first call has finished.
WAIT_POLL_S: Final = 0.02
# A claim outlives its call's own budget by this much, in case the holder is slow to finish.
LEASE_MARGIN_S: Final = 1.0
_RESPONSE: Final = b"R"
_ERROR: Final = b"E"


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request_id in its caller's scope, and the fingerprint of the request it was used for."""

    key: str
    fingerprint: str


def encode_outcome(outcome: pb.SendCodeResponse | ServiceError) -> bytes:
    """The stored form of an outcome."""
    if isinstance(outcome, ServiceError):
        fields = {"reason": outcome.reason.value, "message": outcome.message}
        return _ERROR + json.dumps({**fields, "metadata": outcome.metadata}).encode()
    return _RESPONSE + outcome.SerializeToString()


def decode_outcome(record: bytes) -> pb.SendCodeResponse | ServiceError:
    """The replayed outcome of a stored record (a response marked replayed, or the error)."""
    if record.startswith(_RESPONSE):
        response = pb.SendCodeResponse.FromString(record[1:])
        response.replayed = True
        return response
    fields = json.loads(record[1:])
    metadata = {**fields["metadata"], "replayed": "true"}
    return ServiceError(Reason(fields["reason"]), fields["message"], metadata=metadata)


def is_stored(outcome: pb.SendCodeResponse | ServiceError) -> bool:
    """Whether an SMS was or may have been sent: only such outcomes are stored."""
    return not isinstance(outcome, ServiceError) or outcome.delivery_unknown


class Idempotency:
    """Claims, waits for, stores and replays request_ids in a store."""

    def __init__(self, store: Store, secret: bytes, ttl_s: float) -> None:
        self._store = store
        self._secret = secret
        self._ttl_s = ttl_s

    def key(self, caller: str, request_id: str, request_parts: tuple[str, ...]) -> IdempotencyKey:
        """The scoped key and a keyed hash of the request: the code itself is never stored."""
        message = "\x1f".join(request_parts).encode()
        fingerprint = hmac.digest(self._secret, message, "sha256").hex()
        return IdempotencyKey(f"{caller}\x1f{request_id}", fingerprint)

    async def begin(
        self, key: IdempotencyKey, budget_s: float
    ) -> pb.SendCodeResponse | ServiceError | None:
        """Claims the key (None: go ahead and send), or returns the stored outcome to replay.

        A concurrent duplicate waits for the first call within its own budget. Raises
        REQUEST_ID_REUSED for a different request, UNAVAILABLE when the wait runs out.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while True:
            claim = await self._store.claim(key.key, key.fingerprint, budget_s + LEASE_MARGIN_S)
            if claim.state is ClaimState.NEW:
                return None
            if claim.state is ClaimState.DONE:
                return decode_outcome(claim.record)
            if claim.state is ClaimState.MISMATCH:
                raise ServiceError(
                    Reason.REQUEST_ID_REUSED,
                    "The request_id was already used for a different request.",
                )
            if loop.time() + WAIT_POLL_S >= deadline:
                raise ServiceError(
                    Reason.REQUEST_ID_IN_PROGRESS,
                    "A call with this request_id is still in progress; retry with the same id.",
                )
            await asyncio.sleep(WAIT_POLL_S)

    async def finish(
        self, key: IdempotencyKey, outcome: pb.SendCodeResponse | ServiceError
    ) -> None:
        """Stores an outcome that sent (or may have sent) an SMS; releases the key otherwise."""
        if is_stored(outcome):
            await self._store.complete(
                key.key, key.fingerprint, encode_outcome(outcome), self._ttl_s
            )
        else:
            await self._store.release_claim(key.key, key.fingerprint)

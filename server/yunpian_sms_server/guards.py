"""What stands between a valid request and YunPian: idempotency and rate limits, and what to do
when their store fails (`store.on_error`: "deny" refuses with UNAVAILABLE, "allow" sends anyway).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import structlog

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.config import Config
from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.idempotency import Idempotency, IdempotencyKey
from yunpian_sms_server.rate_limits import RateLimiter
from yunpian_sms_server.stores import Store, StoreUnavailableError, Window

ON_ERROR_ALLOW: Final = "allow"

_log = structlog.get_logger("yunpian_sms.guards")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request_id claimed for this call (`replay` None), or the stored outcome to replay."""

    replay: pb.SendCodeResponse | ServiceError | None = None


class SendGuards:
    """Applies idempotency and rate limits through one store, under its on_error policy."""

    def __init__(
        self,
        store: Store,
        config: Config,
        secret: bytes,
        on_allowed_failure: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.limiter = RateLimiter(store, config.limits)
        self.idempotency = Idempotency(store, secret, config.store.idempotency_ttl_seconds)
        self._allow_on_error = config.store.on_error == ON_ERROR_ALLOW
        # Called for each store failure that "allow" lets pass (a metric counts them).
        self._on_allowed_failure = on_allowed_failure

    async def _guarded(self, operation: Awaitable[_T], what: str) -> tuple[bool, _T | None]:
        """Runs a store operation: (True, result), or (False, None) when "allow" excuses it."""
        try:
            return True, await operation
        except StoreUnavailableError as error:
            if not self._allow_on_error:
                raise ServiceError(
                    Reason.STORE_UNAVAILABLE,
                    "The rate-limit store is unavailable; nothing was sent.",
                ) from None
            if self._on_allowed_failure is not None:
                self._on_allowed_failure()
            _log.warning("store_unavailable", operation=what, error=str(error), on_error="allow")
            return False, None

    async def begin(self, key: IdempotencyKey, budget_s: float) -> Claimed | None:
        """Claims the request_id or finds its outcome; None when the store failed under "allow"."""
        ok, replay = await self._guarded(self.idempotency.begin(key, budget_s), "claim")
        return Claimed(replay) if ok else None

    async def acquire(self, windows: Sequence[Window], token: str, masked_phone: str) -> None:
        """Counts a send; raises RATE_LIMITED, or STORE_UNAVAILABLE under "deny"."""
        await self._guarded(self.limiter.acquire(windows, token, masked_phone), "acquire")

    async def release(self, windows: Sequence[Window], token: str) -> None:
        """Gives a send's slots back; a store failure here only costs the caller a slot."""
        try:
            await self.limiter.release(windows, token)
        except StoreUnavailableError as error:
            _log.warning("store_unavailable", operation="release", error=str(error))

    async def finish(
        self, key: IdempotencyKey, outcome: pb.SendCodeResponse | ServiceError
    ) -> None:
        """Stores or releases the request_id; a store failure never changes the outcome."""
        try:
            await self.idempotency.finish(key, outcome)
        except StoreUnavailableError as error:
            _log.warning("store_unavailable", operation="finish", error=str(error))

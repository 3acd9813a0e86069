"""Rate limits per phone number, per caller and global , counted before a send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from yunpian_sms_server.config import LimitsConfig
from yunpian_sms_server.errors import QuotaViolation, Reason, ServiceError
from yunpian_sms_server.limits import Window
from yunpian_sms_server.phone import PhoneNumber
from yunpian_sms_server.stores import Refusal, Store

GLOBAL_SUBJECT: Final = "all"


class RateLimiter:
    """Builds the windows a send counts in, and refuses a send that would overflow one."""

    def __init__(self, store: Store, limits: LimitsConfig) -> None:
        self._store = store
        self._limits = limits
        # The caller and global windows of each caller: the same on every call.
        self._shared: dict[str, tuple[Window, ...]] = {}

    def windows(self, phone: PhoneNumber, caller: str) -> list[Window]:
        """Every window a send to `phone` by `caller` counts in; numbers count in E.164."""
        shared = self._shared.get(caller)
        if shared is None:
            shared = self._shared[caller] = (
                *(Window("caller", caller, limit) for limit in self._limits.per_caller),
                *(Window("global", GLOBAL_SUBJECT, limit) for limit in self._limits.global_),
            )
        return [*(Window("phone", phone.e164, limit) for limit in self._limits.per_phone), *shared]

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        """Counts the send as `token` in every window, or says which window is full."""
        if not windows:
            return None
        return await self._store.acquire(windows, token)

    async def release(self, windows: Sequence[Window], token: str) -> None:
        """Gives the send's slots back: nothing was sent."""
        if windows:
            await self._store.release(windows, token)

    @staticmethod
    def refusal_error(refusal: Refusal, masked_phone: str) -> ServiceError:
        """RATE_LIMITED, with the wait (RetryInfo) and the full window (QuotaFailure)."""
        return _rate_limited(refusal, masked_phone)


def _rate_limited(refusal: Refusal, masked_phone: str) -> ServiceError:
    window = refusal.window
    subject = masked_phone if window.scope == "phone" else window.subject
    description = f"At most {window.limit.text} sends per {window.scope} ({subject})."
    return ServiceError(
        Reason.RATE_LIMITED,
        f"Too many codes sent: the {window.scope} limit {window.limit.text} is reached.",
        metadata={"scope": window.scope, "limit": window.limit.text},
        quota=QuotaViolation(f"{window.scope}:{subject}", description),
        retry_after_s=refusal.retry_after_s,
    )

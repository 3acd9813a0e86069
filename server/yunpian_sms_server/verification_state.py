"""A phone verification as values: where it stands, and the keyed hashes of the codes sent.

The codes themselves are never kept: only HMAC-SHA256(secret, verification_id ‖ code) of each
code sent. Checking hashes a typed code under the current secret and the previous ones (so the
secret can be rotated with no failed checks) and compares in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

ID_PREFIX: Final = "vf_"
# Random bytes of a verification id: 192 bits, beyond guessing.
ID_BYTES: Final = 24


class VerificationStatus(StrEnum):
    """Where a verification stands (the proto's VerificationStatus without its prefix)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    MAX_ATTEMPTS_REACHED = "MAX_ATTEMPTS_REACHED"


@dataclass(slots=True)
class VerificationState:
    """One verification as the store keeps it (no code, only the codes' hashes)."""

    verification_id: str
    caller: str
    phone: str  # as sent to YunPian: 11 digits for the mainland, +E.164 otherwise
    usage_type: str
    status: VerificationStatus
    expires_at: float  # wall-clock seconds since the epoch
    send_count: int = 0
    checks_used: int = 0
    max_checks: int = 0
    message_id: str = ""
    code_hashes: tuple[str, ...] = field(default=(), repr=False)

    @property
    def checks_remaining(self) -> int:
        return max(self.max_checks - self.checks_used, 0)

    def as_seen_at(self, now: float) -> VerificationState:
        """The state at `now`: a pending verification past its expiry has expired."""
        if self.status is VerificationStatus.PENDING and now >= self.expires_at:
            self.status = VerificationStatus.EXPIRED
        return self


def new_verification_id() -> str:
    """An opaque, unguessable, printable id."""
    return ID_PREFIX + secrets.token_urlsafe(ID_BYTES)


class CodeHasher:
    """Hashes codes under the current secret; checks them under it and the previous ones."""

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._secrets = (secret, *previous)

    def hash(self, verification_id: str, code: str) -> str:
        """The stored form of a code sent for a verification."""
        return self._digest(self._secrets[0], verification_id, code)

    def candidates(self, verification_id: str, code: str) -> tuple[str, ...]:
        """The stored forms `code` would have under each secret, current first: the store
        compares them with the hashes of the codes sent."""
        return tuple(self._digest(secret, verification_id, code) for secret in self._secrets)

    @staticmethod
    def _digest(secret: bytes, verification_id: str, code: str) -> str:
        message = f"{verification_id}\x1f{code}".encode()
        return hmac.digest(secret, message, "sha256").hex()

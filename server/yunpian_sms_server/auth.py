"""Who is calling: bearer tokens (stored only as SHA-256) or client certificates, and what each
caller may send. The caller's name scopes logs, metrics, rate limits and request_ids.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from yunpian_sms_server.config import AuthConfig
from yunpian_sms_server.errors import Reason, ServiceError

AUTHORIZATION_KEY: Final = "authorization"
BEARER_PREFIX: Final = "bearer "
# gRPC's auth context names the client certificate's subject common name so.
CERT_COMMON_NAME: Final = "x509_common_name"
ANONYMOUS: Final = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller; `usage_types` empty means every usage type."""

    name: str
    usage_types: frozenset[str] = frozenset()

    def may_send(self, usage_type: str) -> bool:
        return not self.usage_types or usage_type in self.usage_types


ANONYMOUS_CALLER: Final = Caller(ANONYMOUS)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the config stores for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def require_usage_type(caller: Caller, usage_type: str) -> None:
    """Raises PERMISSION_DENIED unless the caller may send this usage type."""
    if not caller.may_send(usage_type):
        raise ServiceError(
            Reason.PERMISSION_DENIED,
            f"Caller {caller.name} may not send usage type {usage_type}.",
            metadata={"caller": caller.name, "usage_type": usage_type},
        )


class Authenticator:
    """Identifies callers from request metadata and the TLS peer's certificate."""

    def __init__(self, auth: AuthConfig | None, *, required: bool) -> None:
        self.required = required
        callers = auth.callers if auth is not None else ()
        self._by_token = [(c.token_sha256, c) for c in callers if c.token_sha256 is not None]
        self._by_name = {c.name: c for c in callers}
        # Tokens already proven, so the hash is paid once per token, not per RPC. Only valid
        # tokens enter, so it holds at most one entry per configured caller.
        self._proven: dict[str, Caller] = {}

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        auth_context: Callable[[], Mapping[str, Iterable[bytes]]],
    ) -> Caller:
        """The caller, or UNAUTHENTICATED. A bearer token wins over a certificate.

        `auth_context` (the RPC's, for the certificate) is only called when there is no token.
        """
        if not self.required:
            return ANONYMOUS_CALLER
        token = _bearer_token(metadata)
        if token is not None:
            caller = self._proven.get(token)
            if caller is None:
                caller = self._proven[token] = self._by_token_hash(hash_token(token))
            return caller
        names = list(auth_context().get(CERT_COMMON_NAME, ()))
        if names:
            name = names[0].decode(errors="replace")
            known = self._by_name.get(name)
            if known is not None:
                return Caller(known.name, known.usage_types)
            raise _unauthenticated(f"The client certificate's subject {name} is not a caller.")
        raise _unauthenticated("Send 'authorization: Bearer <token>' or a client certificate.")

    def _by_token_hash(self, digest: str) -> Caller:
        found = None
        for known_digest, caller in self._by_token:  # every entry compared: constant time
            if hmac.compare_digest(known_digest, digest):
                found = caller
        if found is None:
            raise _unauthenticated("The bearer token is not valid.")
        return Caller(found.name, found.usage_types)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            if value.lower().startswith(BEARER_PREFIX):
                return value[len(BEARER_PREFIX) :].strip()
            raise _unauthenticated("The authorization metadata must be 'Bearer <token>'.")
    return None


def _unauthenticated(message: str) -> ServiceError:
    return ServiceError(Reason.UNAUTHENTICATED, message)

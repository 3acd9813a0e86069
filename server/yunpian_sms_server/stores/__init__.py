"""Shared state of rate limits, idempotency and verifications: in memory (one replica) or in
Redis (several). interface.py says what a store offers; memory_store.py and redis_store.py are
the two stores; `open_store` picks one by URL.
"""

from __future__ import annotations

from yunpian_sms_server.stores.interface import (
    DEFAULT_MAX_CONNECTIONS,
    KEY_PREFIX,
    CheckUse,
    Claim,
    ClaimCounted,
    ClaimState,
    CodeAdded,
    Refusal,
    SavedReports,
    Store,
    StoreUnavailableError,
    store_required,
)
from yunpian_sms_server.stores.memory_store import MemoryStore
from yunpian_sms_server.stores.redis_store import RedisStore, url_problem

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "KEY_PREFIX",
    "CheckUse",
    "Claim",
    "ClaimCounted",
    "ClaimState",
    "CodeAdded",
    "MemoryStore",
    "RedisStore",
    "Refusal",
    "SavedReports",
    "Store",
    "StoreUnavailableError",
    "open_store",
    "store_required",
    "url_problem",
]


def open_store(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Store:
    """The store a `store.url` names: memory:// or redis:// (at most `max_connections`)."""
    if url.startswith("memory:"):
        return MemoryStore()
    return RedisStore(url, max_connections)

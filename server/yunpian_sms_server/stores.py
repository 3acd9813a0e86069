"""Shared state of rate limits and idempotency: in memory (one replica) or in Redis (several).

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

import asyncio
import bisect
import heapq
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from yunpian_sms_server.limits import Window

# Redis operations that take longer than this count as a store failure.
REDIS_TIMEOUT_S: Final = 1.0
# Redis operations (and so connections) in flight at once unless configured; more wait their turn.
DEFAULT_MAX_CONNECTIONS: Final = 64
KEY_PREFIX: Final = "yunpian-sms:"
# The in-memory store forgets expired idempotency records at most this often (claim() never
# answers from an expired one).
RECORD_SWEEP_INTERVAL_S: Final = 1.0
# A stored idempotency record in memory starts with its expiry and its fingerprint's length.
_RECORD_HEAD: Final = struct.Struct("<dH")


class StoreUnavailableError(Exception):
    """The store could not be reached or failed; the caller applies store.on_error."""


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

    async def complete(self, key: str, fingerprint: str, record: bytes, ttl_s: float) -> None:
        """Stores the outcome of a request_id for `ttl_s` seconds, whoever holds its claim."""
        ...

    async def release_claim(self, key: str, holder: str) -> None:
        """Gives up `holder`'s claim without an outcome (a retry is judged afresh); a claim of
        another holder, or a stored outcome, is left as it is."""
        ...

    async def ping(self) -> None:
        """Raises StoreUnavailableError when the store cannot serve."""
        ...

    async def close(self) -> None: ...


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
        refusal: Refusal | None = None
        for window in windows:
            entries = self._logs.get(window.subject_key)
            if not entries or len(entries) < window.limit.count:
                continue
            blocking = entries[len(entries) - window.limit.count][0]
            wait = blocking + window.limit.period_s - now
            if wait > 0 and (refusal is None or wait > refusal.retry_after_s):
                refusal = Refusal(window, wait)
        if refusal is not None:
            return refusal
        keep: dict[str, float] = {}
        for window in windows:
            keep[window.subject_key] = max(keep.get(window.subject_key, 0.0), window.limit.period_s)
        for subject, keep_s in keep.items():
            entries = self._logs.get(subject)
            if entries is None:
                self._logs[subject] = [(now, token)]
                heapq.heappush(self._log_expiry, (now + keep_s, keep_s, subject))
                continue
            if entries and entries[0][0] <= now - keep_s:
                del entries[: bisect.bisect_right(entries, now - keep_s, key=_entry_time)]
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

    async def complete(self, key: str, fingerprint: str, record: bytes, ttl_s: float) -> None:
        self._leases.pop(key, None)
        self._records.pop(key, None)  # stored again: to the end, in expiry order
        encoded = fingerprint.encode()
        head = _RECORD_HEAD.pack(self._now() + ttl_s, len(encoded))
        self._records[key] = head + encoded + record

    async def release_claim(self, key: str, holder: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[2] == holder:
            del self._leases[key]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._logs.clear()
        self._log_expiry.clear()
        self._leases.clear()
        self._lease_expiry.clear()
        self._records.clear()


def _entry_time(entry: tuple[float, str]) -> float:
    return entry[0]


# KEYS: the windows' keys. ARGV: token, then (count, period_ms) per key.
# Returns {} when the token was counted, else {index of the fullest window (1-based), wait_ms}.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local worst, worst_wait = 0, -1
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local n = redis.call('ZCARD', key)
  if n >= count then
    local oldest = redis.call('ZRANGE', key, n - count, n - count, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + period - now
    if wait > worst_wait then worst, worst_wait = i, wait end
  end
end
if worst > 0 then return {worst, math.max(worst_wait, 0)} end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return {}
"""

# KEYS[1]: the record. ARGV: holder, lease_ms, then the fingerprints the request may be stored
# under (a new claim stores the first).
# Returns {'new'} | {'pending'} | {'mismatch'} | {'done', record}.
_CLAIM: Final = """
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'record')
if not held[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[3], 'holder', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return {'new'}
end
local same = false
for i = 3, #ARGV do
  if held[1] == ARGV[i] then same = true end
end
if not same then return {'mismatch'} end
if not held[2] then return {'pending'} end
return {'done', held[2]}
"""

# KEYS[1]: the record. ARGV: holder. Deletes it only while it is a pending claim of that holder.
_RELEASE_CLAIM: Final = """
local held = redis.call('HMGET', KEYS[1], 'holder', 'record')
if held[1] == ARGV[1] and not held[2] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _window_key(window: Window) -> str:
    """The Redis key of a window's log: one per subject and limit."""
    limit = f"{window.limit.count}/{window.limit.period_s:g}"
    return f"{KEY_PREFIX}rate:{window.scope}:{window.subject}:{limit}"


class RedisStore:
    """The store shared by every replica, in one Redis server; each operation is one round trip.

    redis-py's pool refuses a command when all its connections are busy; a semaphore of the same
    size in front of it makes such a command wait for a connection instead.
    """

    def __init__(self, url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            max_connections=max_connections,
        )
        self._turns = asyncio.Semaphore(max_connections)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._claim = self._redis.register_script(_CLAIM)
        self._release_claim = self._redis.register_script(_RELEASE_CLAIM)

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        if not windows:
            return None
        args: list[str | int] = [token]
        for window in windows:
            args += [window.limit.count, int(window.limit.period_s * 1000)]
        try:
            async with self._turns:
                answer = await self._acquire(
                    keys=[_window_key(window) for window in windows], args=args
                )
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None
        if not answer:
            return None
        index, wait_ms = int(answer[0]), int(answer[1])
        return Refusal(windows[index - 1], wait_ms / 1000)

    async def release(self, windows: Sequence[Window], token: str) -> None:
        try:
            async with self._turns, self._redis.pipeline(transaction=True) as pipe:
                for window in windows:
                    pipe.zrem(_window_key(window), token)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def claim(
        self, key: str, fingerprints: Sequence[str], holder: str, lease_s: float
    ) -> Claim:
        try:
            async with self._turns:
                answer = await self._claim(
                    keys=[KEY_PREFIX + "idem:" + key],
                    args=[holder, max(1, int(lease_s * 1000)), *fingerprints],
                )
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None
        state = ClaimState(answer[0].decode())
        return Claim(state, answer[1] if state is ClaimState.DONE else b"")

    async def complete(self, key: str, fingerprint: str, record: bytes, ttl_s: float) -> None:
        name = KEY_PREFIX + "idem:" + key
        try:
            async with self._turns, self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"fingerprint": fingerprint, "record": record})
                pipe.hdel(name, "holder")
                pipe.pexpire(name, max(1, int(ttl_s * 1000)))
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def release_claim(self, key: str, holder: str) -> None:
        try:
            async with self._turns:
                await self._release_claim(keys=[KEY_PREFIX + "idem:" + key], args=[holder])
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def ping(self) -> None:
        try:
            async with self._turns:
                await self._redis.ping()
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def close(self) -> None:
        await self._redis.aclose()


def url_problem(url: str) -> str | None:
    """What redis-py would refuse in a redis:// URL (its ?options), short of connecting; None
    when nothing (and for memory://). The config checks the rest of the URL."""
    if url.startswith("memory:"):
        return None
    try:
        # (redis-py leaves make_connection untyped.)
        aioredis.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as error:
        return f"has an option redis-py does not know ({error})"
    except ValueError as error:
        return f"redis-py refuses it: {error}"
    return None


def open_store(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Store:
    """The store a `store.url` names: memory:// or redis:// (at most `max_connections`)."""
    if url.startswith("memory:"):
        return MemoryStore()
    return RedisStore(url, max_connections)

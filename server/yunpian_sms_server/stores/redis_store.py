"""The store shared by every replica, in one Redis server: each operation is one Lua script, so
one round trip, atomic across replicas."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from yunpian_sms_server.delivery_state import (
    EARLY_REPORT_S,
    DeliveryReport,
    DeliveryState,
    SentMessage,
)
from yunpian_sms_server.limits import Window
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
    StoreUnavailableError,
)
from yunpian_sms_server.stores.redis_pipe import Arg, RedisPipe
from yunpian_sms_server.verification_state import VerificationState, VerificationStatus

# Counting a send in its rate-limit windows, and claiming a request_id, as Lua functions: the
# scripts below run them alone or (a SendCode with a request_id) together, in one round trip.
_COUNT_AND_CLAIM_PRELUDE: Final = """
-- Counts `token` in the windows KEYS[first..], whose (count, period_ms) pairs are ARGV[arg..],
-- if every one has room; else counts nothing and returns {window index (1-based), wait_ms}.
local function acquire(first, token, arg)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local windows = #KEYS - first + 1
  local worst, worst_wait = 0, -1
  for i = 0, windows - 1 do
    local key = KEYS[first + i]
    local count = tonumber(ARGV[arg + 2 * i])
    local period = tonumber(ARGV[arg + 2 * i + 1])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
    local n = redis.call('ZCARD', key)
    if n >= count then
      local oldest = redis.call('ZRANGE', key, n - count, n - count, 'WITHSCORES')
      local wait = tonumber(oldest[2]) + period - now
      if wait > worst_wait then worst, worst_wait = i + 1, wait end
    end
  end
  if worst > 0 then return {worst, math.max(worst_wait, 0)} end
  for i = 0, windows - 1 do
    redis.call('ZADD', KEYS[first + i], now, token)
    redis.call('PEXPIRE', KEYS[first + i], tonumber(ARGV[arg + 2 * i + 1]))
  end
  return {}
end
-- Claims the request_id record `key` for `holder` for lease_ms; the request is the stored one
-- when the stored fingerprint is any of ARGV[fp_first..fp_last] (a new claim stores the first).
-- Returns {'new'} | {'pending'} | {'mismatch'} | {'done', record}.
local function claim(key, holder, lease_ms, fp_first, fp_last)
  local held = redis.call('HMGET', key, 'fingerprint', 'record')
  if not held[1] then
    redis.call('HSET', key, 'fingerprint', ARGV[fp_first], 'holder', holder)
    redis.call('PEXPIRE', key, tonumber(lease_ms))
    return {'new'}
  end
  local same = false
  for i = fp_first, fp_last do
    if held[1] == ARGV[i] then same = true end
  end
  if not same then return {'mismatch'} end
  if not held[2] then return {'pending'} end
  return {'done', held[2]}
end
"""

# KEYS: the windows. ARGV: token, then (count, period_ms) per window.
_ACQUIRE: Final = _COUNT_AND_CLAIM_PRELUDE + "return acquire(1, ARGV[1], 2)"

# KEYS[1]: the record. ARGV: holder, lease_ms, then the fingerprints.
_CLAIM: Final = _COUNT_AND_CLAIM_PRELUDE + "return claim(KEYS[1], ARGV[1], ARGV[2], 3, #ARGV)"

# KEYS: the record, then the windows. ARGV: holder (also the windows' token), lease_ms, the
# number of fingerprints, the fingerprints, then (count, period_ms) per window. A new claim whose
# send a window refuses is given up at once: {'refused', window index, wait_ms}.
_CLAIM_AND_ACQUIRE: Final = (
    _COUNT_AND_CLAIM_PRELUDE
    + """
local fingerprints = tonumber(ARGV[3])
local state = claim(KEYS[1], ARGV[1], ARGV[2], 4, 3 + fingerprints)
if state[1] ~= 'new' or #KEYS == 1 then return state end
local refused = acquire(2, ARGV[1], 4 + fingerprints)
if #refused == 0 then return state end
redis.call('DEL', KEYS[1])
return {'refused', refused[1], refused[2]}
"""
)

# KEYS: the windows. ARGV: the token of a send that sent nothing.
_RELEASE: Final = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 0
"""

# Messages sent, for their delivery reports: a hash at MESSAGE_PREFIX + sid (caller, sent_ms,
# state, code, detail, received_ms), expiring when its report is no longer of use. A report of a
# message not recorded yet (YunPian can report before the sending replica has recorded it) waits
# at EARLY_REPORT_PREFIX + sid for EARLY_REPORT_S, and recording the message takes it in.
MESSAGE_PREFIX: Final = KEY_PREFIX + "msg:"
EARLY_REPORT_PREFIX: Final = KEY_PREFIX + "msg-early:"
LEASE_PREFIX: Final = KEY_PREFIX + "lease:"
_MESSAGE_PRELUDE: Final = """
-- Records a message sent (KEYS: the message, its early report), taking in a report that came
-- first: returns that report's fields (state, code, detail, received_ms), else false. Recording
-- a message again changes nothing (a settle can run twice).
local function record_message(message, early, caller, sent_ms, keep_ms)
  if redis.call('EXISTS', message) == 1 then return false end
  redis.call('HSET', message, 'caller', caller, 'sent_ms', sent_ms, 'state', 'PENDING')
  redis.call('PEXPIRE', message, tonumber(keep_ms))
  local report = redis.call('HMGET', early, 'state', 'code', 'detail', 'received_ms')
  if not report[1] then return false end
  redis.call('HSET', message, 'state', report[1], 'code', report[2], 'detail', report[3],
    'received_ms', report[4])
  redis.call('DEL', early)
  return report
end
"""

# KEYS: the request_id's record, then (optionally) the message and its early report. ARGV:
# fingerprint, record, ttl_ms, then (optionally) caller, sent_ms, keep_ms. Whoever holds the
# claim: an outcome that may have sent an SMS is kept, always; and the message sent, for its
# report. Returns what record_message returns (false without a message).
_COMPLETE: Final = (
    _MESSAGE_PRELUDE
    + """
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'record', ARGV[2])
redis.call('HDEL', KEYS[1], 'holder')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
if KEYS[2] then return record_message(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6]) end
return false
"""
)

# KEYS: the message, its early report. ARGV: caller, sent_ms, keep_ms.
_RECORD_MESSAGE: Final = (
    _MESSAGE_PRELUDE
    + """
return record_message(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: per report, its message and its early report. ARGV: early_ms, then per report (state,
# code, detail, received_ms or ''). Returns per report: 'early' (its message is not recorded:
# the first such report waits for it), 'duplicate', or {caller, sent_ms} of a message saved now.
_SAVE_REPORTS: Final = """
local answers = {}
for i = 1, #KEYS / 2 do
  local message, early = KEYS[2 * i - 1], KEYS[2 * i]
  local r = redis.call('HMGET', message, 'state', 'caller', 'sent_ms')
  local base = 1 + 4 * (i - 1)
  if not r[1] then
    if redis.call('EXISTS', early) == 0 then
      redis.call('HSET', early, 'state', ARGV[base + 1], 'code', ARGV[base + 2],
        'detail', ARGV[base + 3], 'received_ms', ARGV[base + 4])
      redis.call('PEXPIRE', early, tonumber(ARGV[1]))
    end
    answers[i] = 'early'
  elseif r[1] ~= 'PENDING' then
    answers[i] = 'duplicate'
  else
    redis.call('HSET', message, 'state', ARGV[base + 1], 'code', ARGV[base + 2],
      'detail', ARGV[base + 3], 'received_ms', ARGV[base + 4])
    answers[i] = {r[2], r[3]}
  end
end
return answers
"""

# KEYS[1]: the lease. ARGV: holder, lease_ms. Takes it, or renews it for its holder.
_TAKE_LEASE: Final = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

# KEYS[1]: the lease. ARGV: holder.
_GIVE_UP_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: the record. ARGV: holder. Deletes it only while it is a pending claim of that holder.
_RELEASE_CLAIM: Final = """
local held = redis.call('HMGET', KEYS[1], 'holder', 'record')
if held[1] == ARGV[1] and not held[2] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Verifications. A verification is a hash at VERIFICATION_PREFIX + id (caller, phone, usage,
# status, expire_ms, sends, checks, max_checks, message_id, hashes: the codes' hashes joined by
# ",", pending_key) and, while pending, its pending key holds its id. Every script reads the
# store's clock, ends a pending verification past its expiry as EXPIRED, and answers with the
# hash's fields after the change.
_VERIFICATION_PRELUDE: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Ends a pending verification: its status, no codes, its pending key freed, kept until then.
local function end_as(key, id, status, keep_until)
  redis.call('HSET', key, 'status', status, 'hashes', '')
  local pending_key = redis.call('HGET', key, 'pending_key')
  if pending_key and redis.call('GET', pending_key) == id then
    redis.call('DEL', pending_key)
  end
  local fields = redis.call('HGETALL', key)
  redis.call('PEXPIREAT', key, keep_until)
  return fields
end
-- The verification's fields and status, ended as EXPIRED first when its time has passed (the
-- third value says so); nil if unknown.
local function live(key, id, keep_ms, now)
  local r = redis.call('HMGET', key, 'status', 'expire_ms')
  if not r[1] then return nil end
  if r[1] == 'PENDING' and tonumber(r[2]) <= now then
    return end_as(key, id, 'EXPIRED', tonumber(r[2]) + keep_ms), 'EXPIRED', true
  end
  return redis.call('HGETALL', key), r[1], false
end
"""

# KEYS: the pending key, the fresh verification's key. ARGV: fresh id, caller, phone, usage,
# max_checks, ttl_ms, keep_ms, the verification key prefix. Returns {id, fields}.
_OPEN_VERIFICATION: Final = (
    _VERIFICATION_PRELUDE
    + """
local now = now_ms()
local id = redis.call('GET', KEYS[1])
if id then
  local fields, status = live(ARGV[8] .. id, id, tonumber(ARGV[7]), now)
  if status == 'PENDING' then return {id, fields} end
end
local expire = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'caller', ARGV[2], 'phone', ARGV[3], 'usage', ARGV[4],
  'status', 'PENDING', 'expire_ms', expire, 'sends', 0, 'checks', 0, 'max_checks', ARGV[5],
  'message_id', '', 'hashes', '', 'pending_key', KEYS[1])
redis.call('PEXPIREAT', KEYS[2], expire + tonumber(ARGV[7]))
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', expire)
return {ARGV[1], redis.call('HGETALL', KEYS[2])}
"""
)

# KEYS[1]: the verification. ARGV: id, code hash, max_sends, keep_ms.
# Returns {'added' | 'send_limit' | 'ended', fields}.
_ADD_VERIFICATION_CODE: Final = (
    _VERIFICATION_PRELUDE
    + """
local fields, status = live(KEYS[1], ARGV[1], tonumber(ARGV[4]), now_ms())
if status ~= 'PENDING' then return {'ended', fields} end
local r = redis.call('HMGET', KEYS[1], 'sends', 'hashes')
if tonumber(r[1]) >= tonumber(ARGV[3]) then return {'send_limit', fields} end
local hashes = ARGV[2]
if r[2] ~= '' then hashes = r[2] .. ',' .. ARGV[2] end
redis.call('HSET', KEYS[1], 'sends', tonumber(r[1]) + 1, 'hashes', hashes)
return {'added', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS[1]: the verification. ARGV: the hash of a code that was never sent.
_WITHDRAW_VERIFICATION_CODE: Final = """
local r = redis.call('HMGET', KEYS[1], 'hashes', 'sends')
if not r[1] then return 0 end
local kept, found = {}, false
for hash in string.gmatch(r[1], '[^,]+') do
  if hash == ARGV[1] and not found then found = true else table.insert(kept, hash) end
end
if found then
  redis.call('HSET', KEYS[1], 'hashes', table.concat(kept, ','), 'sends', tonumber(r[2]) - 1)
end
return 0
"""

# KEYS[1]: the verification. ARGV: the message id. A forgotten verification is not recreated.
_NOTE_VERIFICATION_MESSAGE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'message_id', ARGV[1]) end
return 0
"""

# KEYS[1]: the verification. ARGV: id, keep_ms, caller, then the typed code's hashes. Returns
# {'approved' | 'wrong' | 'ended' | 'expired_now', fields} or {'unknown'} (unknown, or another
# caller's: nothing used). One check used and decided in one step: a right code approves, the
# last wrong one ends it. The hashes are HMACs under a secret the store never sees, and Lua 5.1
# interns every string, so `==` compares them in constant time.
_USE_VERIFICATION_CHECK: Final = (
    _VERIFICATION_PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'caller') ~= ARGV[3] then return {'unknown'} end
local now = now_ms()
local fields, status, expired_now = live(KEYS[1], ARGV[1], tonumber(ARGV[2]), now)
if expired_now then return {'expired_now', fields} end
if status ~= 'PENDING' then return {'ended', fields} end
local r = redis.call('HMGET', KEYS[1], 'checks', 'max_checks', 'hashes')
local used = tonumber(r[1]) + 1
redis.call('HSET', KEYS[1], 'checks', used)
local right = false
for stored in string.gmatch(r[3], '[^,]+') do
  for i = 4, #ARGV do
    if stored == ARGV[i] then right = true end
  end
end
local keep_until = now + tonumber(ARGV[2])
if right then return {'approved', end_as(KEYS[1], ARGV[1], 'APPROVED', keep_until)} end
if used >= tonumber(r[2]) then
  return {'wrong', end_as(KEYS[1], ARGV[1], 'MAX_ATTEMPTS_REACHED', keep_until)}
end
return {'wrong', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS[1]: the verification. ARGV: id, status, keep_ms. Returns {'ended', fields} when this call
# ended it, {'kept', fields} when it had ended already, {} if unknown.
_END_VERIFICATION: Final = (
    _VERIFICATION_PRELUDE
    + """
local now = now_ms()
local fields, status = live(KEYS[1], ARGV[1], tonumber(ARGV[3]), now)
if not fields then return {} end
if status ~= 'PENDING' then return {'kept', fields} end
return {'ended', end_as(KEYS[1], ARGV[1], ARGV[2], now + tonumber(ARGV[3]))}
"""
)

# KEYS[1]: the verification. ARGV: id, keep_ms. Returns {fields} or {} if unknown.
_GET_VERIFICATION: Final = (
    _VERIFICATION_PRELUDE
    + """
local fields = live(KEYS[1], ARGV[1], tonumber(ARGV[2]), now_ms())
if not fields then return {} end
return fields
"""
)
VERIFICATION_PREFIX: Final = KEY_PREFIX + "verify:"
PENDING_VERIFICATION_PREFIX: Final = KEY_PREFIX + "verify-pending:"


def _verification_state(verification_id: str, flat: list[bytes]) -> VerificationState:
    """A verification's hash fields (HGETALL's flat list) as its state."""
    fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    hashes = fields.get("hashes", "")
    return VerificationState(
        verification_id=verification_id,
        caller=fields["caller"],
        phone=fields["phone"],
        usage_type=fields["usage"],
        status=VerificationStatus(fields["status"]),
        expires_at=int(fields["expire_ms"]) / 1000,
        send_count=int(fields["sends"]),
        checks_used=int(fields["checks"]),
        max_checks=int(fields["max_checks"]),
        message_id=fields.get("message_id", ""),
        code_hashes=tuple(hashes.split(",")) if hashes else (),
    )


def _with_report(message: SentMessage, report: list[bytes] | None) -> SentMessage | None:
    """The message as the report that waited for it says it ended (the fields record_message
    returns), or None when no report was waiting."""
    if not report:
        return None
    received = _text(report[3])
    return dataclasses.replace(
        message,
        state=DeliveryState(_text(report[0])),
        carrier_code=_text(report[1]),
        carrier_detail=_text(report[2]),
        received_at=int(received) / 1000 if received else None,
    )


@functools.cache
def _sha1(script: str) -> str:
    """The name Redis knows a script by (EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's name, not security


def _message_keys(message_id: str) -> list[str]:
    """The keys of a message sent and of a report of it that came early."""
    return [MESSAGE_PREFIX + message_id, EARLY_REPORT_PREFIX + message_id]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _window_key(window: Window) -> str:
    """The Redis key of a window's log: one per subject and limit."""
    limit = f"{window.limit.count}/{window.limit.period_s:g}"
    return f"{KEY_PREFIX}rate:{window.scope}:{window.subject}:{limit}"


class RedisStore:
    """The store shared by every replica, in one Redis server; each operation is one round trip.

    The operations of every call are pipelined on one connection (RedisPipe), at most
    `max_connections` of them awaiting their replies; more wait their turn.
    """

    def __init__(self, url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self._pipe = RedisPipe(url, max_connections)

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        if not windows:
            return None
        args: list[str | int] = [token]
        for window in windows:
            args += [window.limit.count, int(window.limit.period_s * 1000)]
        answer = await self._run(_ACQUIRE, [_window_key(window) for window in windows], args)
        if not answer:
            return None
        index, wait_ms = int(answer[0]), int(answer[1])
        return Refusal(windows[index - 1], wait_ms / 1000)

    async def release(self, windows: Sequence[Window], token: str) -> None:
        if windows:
            keys = [_window_key(window) for window in windows]
            await self._run(_RELEASE, keys, [token])

    async def claim(
        self, key: str, fingerprints: Sequence[str], holder: str, lease_s: float
    ) -> Claim:
        answer = await self._run(
            _CLAIM,
            [KEY_PREFIX + "idem:" + key],
            [holder, max(1, int(lease_s * 1000)), *fingerprints],
        )
        state = ClaimState(answer[0].decode())
        return Claim(state, answer[1] if state is ClaimState.DONE else b"")

    async def claim_and_acquire(
        self,
        key: str,
        fingerprints: Sequence[str],
        holder: str,
        lease_s: float,
        windows: Sequence[Window],
    ) -> ClaimCounted:
        args: list[str | int] = [holder, _ms(lease_s), len(fingerprints), *fingerprints]
        for window in windows:
            args += [window.limit.count, int(window.limit.period_s * 1000)]
        keys = [KEY_PREFIX + "idem:" + key, *(_window_key(window) for window in windows)]
        answer = await self._run(_CLAIM_AND_ACQUIRE, keys, args)
        if answer[0] == b"refused":
            index, wait_ms = int(answer[1]), int(answer[2])
            return ClaimCounted(Claim(ClaimState.NEW), Refusal(windows[index - 1], wait_ms / 1000))
        state = ClaimState(answer[0].decode())
        return ClaimCounted(Claim(state, answer[1] if state is ClaimState.DONE else b""))

    async def complete(
        self,
        key: str,
        fingerprint: str,
        record: bytes,
        ttl_s: float,
        message: SentMessage | None = None,
        message_keep_s: float = 0.0,
    ) -> SentMessage | None:
        keys = [KEY_PREFIX + "idem:" + key]
        args: list[str | int | float | bytes] = [fingerprint, record, _ms(ttl_s)]
        if message is not None:
            keys += _message_keys(message.message_id)
            args += [message.caller, _ms(message.sent_at), _ms(message_keep_s)]
        taken_in = await self._run(_COMPLETE, keys, args)
        return None if message is None else _with_report(message, taken_in)

    async def record_message(self, message: SentMessage, keep_s: float) -> SentMessage | None:
        taken_in = await self._run(
            _RECORD_MESSAGE,
            _message_keys(message.message_id),
            [message.caller, _ms(message.sent_at), _ms(keep_s)],
        )
        return _with_report(message, taken_in)

    async def save_reports(self, reports: Sequence[DeliveryReport], keep_s: float) -> SavedReports:
        if not reports:
            return SavedReports()
        args: list[str | int | float | bytes] = [_ms(EARLY_REPORT_S)]
        for report in reports:
            received = "" if report.received_at is None else str(_ms(report.received_at))
            args += [report.state.value, report.carrier_code, report.carrier_detail, received]
        keys = [key for report in reports for key in _message_keys(report.message_id)]
        answers = await self._run(_SAVE_REPORTS, keys, args)
        saved, duplicates, unknown = [], 0, 0
        for report, answer in zip(reports, answers, strict=True):
            if answer == b"early":
                unknown += 1
            elif answer == b"duplicate":
                duplicates += 1
            else:
                caller, sent_ms = answer[0].decode(), int(answer[1])
                saved.append(
                    SentMessage(
                        report.message_id,
                        caller,
                        sent_ms / 1000,
                        report.state,
                        report.carrier_code,
                        report.carrier_detail,
                        report.received_at,
                    )
                )
        return SavedReports(tuple(saved), duplicates, unknown)

    async def get_message(self, message_id: str) -> SentMessage | None:
        fields = await self._command("HGETALL", MESSAGE_PREFIX + message_id)  # RESP3: a map
        if not fields:
            return None
        text = {_text(key): _text(value) for key, value in fields.items()}
        received = text.get("received_ms", "")
        return SentMessage(
            message_id=message_id,
            caller=text["caller"],
            sent_at=int(text["sent_ms"]) / 1000,
            state=DeliveryState(text["state"]),
            carrier_code=text.get("code", ""),
            carrier_detail=text.get("detail", ""),
            received_at=int(received) / 1000 if received else None,
        )

    async def take_lease(self, name: str, holder: str, lease_s: float) -> bool:
        taken = await self._run(_TAKE_LEASE, [LEASE_PREFIX + name], [holder, _ms(lease_s)])
        return bool(taken)

    async def give_up_lease(self, name: str, holder: str) -> None:
        await self._run(_GIVE_UP_LEASE, [LEASE_PREFIX + name], [holder])

    async def release_claim(self, key: str, holder: str) -> None:
        await self._run(_RELEASE_CLAIM, [KEY_PREFIX + "idem:" + key], [holder])

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Runs a script (by its SHA1 once Redis knows it); a failure is a StoreUnavailableError.

        NOSCRIPT (a Redis restarted or flushed of its scripts) means it did not run: it runs
        again with its text, which Redis then keeps.
        """
        try:
            try:
                return await self._pipe.execute("EVALSHA", _sha1(script), len(keys), *keys, *args)
            except NoScriptError:
                return await self._pipe.execute("EVAL", script, len(keys), *keys, *args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def _command(self, *args: Arg) -> Any:
        """Redis's reply to one command; a failure is a StoreUnavailableError."""
        try:
            return await self._pipe.execute(*args)
        except (TimeoutError, RedisError, OSError) as error:
            raise StoreUnavailableError(type(error).__name__) from None

    async def open_verification(
        self, pending_key: str, fresh: VerificationState, ttl_s: float, keep_s: float
    ) -> VerificationState:
        keys = [
            PENDING_VERIFICATION_PREFIX + pending_key,
            VERIFICATION_PREFIX + fresh.verification_id,
        ]
        args: list[str | int | float] = [
            fresh.verification_id,
            fresh.caller,
            fresh.phone,
            fresh.usage_type,
            fresh.max_checks,
            _ms(ttl_s),
            _ms(keep_s),
            VERIFICATION_PREFIX,
        ]
        verification_id, flat = await self._run(_OPEN_VERIFICATION, keys, args)
        return _verification_state(verification_id.decode(), flat)

    async def add_verification_code(
        self, verification_id: str, code_hash: str, max_sends: int, keep_s: float
    ) -> tuple[CodeAdded, VerificationState | None]:
        keys = [VERIFICATION_PREFIX + verification_id]
        args: list[str | int | float] = [verification_id, code_hash, max_sends, _ms(keep_s)]
        answer = await self._run(_ADD_VERIFICATION_CODE, keys, args)
        state = _verification_state(verification_id, answer[1]) if answer[1:] else None
        return CodeAdded(answer[0].decode()), state

    async def withdraw_verification_code(self, verification_id: str, code_hash: str) -> None:
        keys = [VERIFICATION_PREFIX + verification_id]
        await self._run(_WITHDRAW_VERIFICATION_CODE, keys, [code_hash])

    async def note_verification_message(self, verification_id: str, message_id: str) -> None:
        keys = [VERIFICATION_PREFIX + verification_id]
        await self._run(_NOTE_VERIFICATION_MESSAGE, keys, [message_id])

    async def find_pending_verification(self, pending_key: str) -> str | None:
        found = await self._command("GET", PENDING_VERIFICATION_PREFIX + pending_key)
        return None if found is None else found.decode() if isinstance(found, bytes) else found

    async def use_verification_check(
        self, verification_id: str, caller: str, code_hashes: Sequence[str], keep_s: float
    ) -> tuple[CheckUse, VerificationState | None]:
        keys = [VERIFICATION_PREFIX + verification_id]
        args: list[str | int | float] = [verification_id, _ms(keep_s), caller, *code_hashes]
        answer = await self._run(_USE_VERIFICATION_CHECK, keys, args)
        if answer[0] == b"unknown":
            return CheckUse.UNKNOWN, None
        return CheckUse(answer[0].decode()), _verification_state(verification_id, answer[1])

    async def end_verification(
        self, verification_id: str, status: VerificationStatus, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        keys = [VERIFICATION_PREFIX + verification_id]
        args: list[str | int | float] = [verification_id, status.value, _ms(keep_s)]
        answer = await self._run(_END_VERIFICATION, keys, args)
        if not answer:
            return None, False
        return _verification_state(verification_id, answer[1]), answer[0] == b"ended"

    async def get_verification(
        self, verification_id: str, keep_s: float
    ) -> VerificationState | None:
        keys = [VERIFICATION_PREFIX + verification_id]
        flat = await self._run(_GET_VERIFICATION, keys, [verification_id, _ms(keep_s)])
        return _verification_state(verification_id, flat) if flat else None

    async def ping(self) -> None:
        await self._command("PING")

    async def close(self) -> None:
        await self._pipe.close()


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

"""Rate limits (rate_limits.py): the windows a send counts in, per phone number, per caller and
global; counted on both stores; and a refusal as RATE_LIMITED with RetryInfo and QuotaFailure,
end to end."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.rpc import error_details_pb2
from support import StartServer, client_for, free_port

from yunpian_sms_client import ResourceExhaustedError
from yunpian_sms_server.config import LimitsConfig
from yunpian_sms_server.errors import Reason
from yunpian_sms_server.limits import Window, parse_limit
from yunpian_sms_server.phone import parse_phone
from yunpian_sms_server.rate_limits import GLOBAL_SUBJECT, RateLimiter
from yunpian_sms_server.sandbox import RunningSandbox
from yunpian_sms_server.stores import MemoryStore, RedisStore, Store, StoreUnavailableError

PHONE = "13800138000"


def limits(
    per_phone: tuple[str, ...] = (), per_caller: tuple[str, ...] = (), global_: tuple[str, ...] = ()
) -> LimitsConfig:
    return LimitsConfig(
        per_phone=tuple(map(parse_limit, per_phone)),
        per_caller=tuple(map(parse_limit, per_caller)),
        global_=tuple(map(parse_limit, global_)),
    )


def token() -> str:
    return uuid.uuid4().hex


# --- the windows ----------------------------------------------------------------------------


def test_a_send_counts_in_one_window_per_limit_phone_then_caller_then_global() -> None:
    limiter = RateLimiter(
        MemoryStore(),
        limits(per_phone=("1/60s", "5/1h"), per_caller=("100/1h",), global_=("1000/1d",)),
    )
    windows = limiter.windows(parse_phone(PHONE), "checkout")
    assert [(w.scope, w.subject, w.limit.text) for w in windows] == [
        ("phone", "+8613800138000", "1/60s"),
        ("phone", "+8613800138000", "5/1h"),
        ("caller", "checkout", "100/1h"),
        ("global", GLOBAL_SUBJECT, "1000/1d"),
    ]


@pytest.mark.parametrize("written", ["+86 138-0013-8000", "8613800138000", "138 0013 8000"])
def test_a_number_counts_in_the_same_windows_however_it_is_written(written: str) -> None:
    limiter = RateLimiter(MemoryStore(), limits(per_phone=("1/60s",)))
    assert limiter.windows(parse_phone(written), "c") == limiter.windows(parse_phone(PHONE), "c")


def test_each_caller_has_its_own_caller_windows_and_every_caller_shares_the_global_ones() -> None:
    limiter = RateLimiter(MemoryStore(), limits(per_caller=("1/1h",), global_=("9/1h",)))
    phone = parse_phone(PHONE)
    checkout, ops = limiter.windows(phone, "checkout"), limiter.windows(phone, "ops")
    assert [w for w in checkout if w.scope == "caller"] != [w for w in ops if w.scope == "caller"]
    assert [w for w in checkout if w.scope == "global"] == [w for w in ops if w.scope == "global"]
    assert limiter.windows(phone, "checkout") == checkout  # asked again: the same


# --- counting on a store ----------------------------------------------------------------------


async def test_sends_to_a_number_are_refused_once_its_limit_is_reached(store: Store) -> None:
    limiter = RateLimiter(store, limits(per_phone=("2/60s",)))
    phone, other = parse_phone(PHONE), parse_phone("13900139000")
    assert await limiter.acquire(limiter.windows(phone, "c"), token()) is None
    assert (
        await limiter.acquire(limiter.windows(parse_phone("+8613800138000"), "c"), token()) is None
    )
    refusal = await limiter.acquire(limiter.windows(phone, "c"), token())
    assert refusal is not None
    assert (refusal.window.scope, refusal.window.subject) == ("phone", phone.e164)
    assert 59.0 < refusal.retry_after_s <= 60.0
    assert await limiter.acquire(limiter.windows(other, "c"), token()) is None


async def test_the_global_limit_is_shared_by_every_number_and_caller(store: Store) -> None:
    limiter = RateLimiter(store, limits(global_=("2/1h",)))
    assert await limiter.acquire(limiter.windows(parse_phone(PHONE), "a"), token()) is None
    assert await limiter.acquire(limiter.windows(parse_phone("13900139000"), "b"), token()) is None
    refusal = await limiter.acquire(limiter.windows(parse_phone("13700137000"), "c"), token())
    assert refusal is not None
    assert refusal.window.scope == "global"


async def test_a_released_send_gives_its_slot_back_in_every_window(store: Store) -> None:
    limiter = RateLimiter(store, limits(per_phone=("1/60s",), per_caller=("1/60s",)))
    windows = limiter.windows(parse_phone(PHONE), "c")
    first = token()
    assert await limiter.acquire(windows, first) is None
    assert await limiter.acquire(windows, token()) is not None
    await limiter.release(windows, first)
    assert await limiter.acquire(windows, token()) is None


async def test_without_limits_a_send_never_waits_on_the_store() -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        limiter = RateLimiter(dead, limits())
        windows = limiter.windows(parse_phone(PHONE), "c")
        assert windows == []
        assert await limiter.acquire(windows, token()) is None
        await limiter.release(windows, token())
        # The store really is down: a window would have needed it.
        with pytest.raises(StoreUnavailableError):
            await dead.acquire([Window("phone", "+8613800138000", parse_limit("1/1s"))], token())
    finally:
        await dead.close()


# --- the refusal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "caller", "subject", "description"),
    [
        (limits(per_phone=("1/60s",)), "c", "phone:138****8000", "per phone (138****8000)"),
        (limits(per_caller=("1/60s",)), "checkout", "caller:checkout", "per caller (checkout)"),
        (limits(global_=("1/60s",)), "c", f"global:{GLOBAL_SUBJECT}", "per global (all)"),
    ],
)
async def test_a_refusal_is_rate_limited_naming_the_full_window_and_the_wait(
    store: Store, config: LimitsConfig, caller: str, subject: str, description: str
) -> None:
    limiter = RateLimiter(store, config)
    phone = parse_phone(PHONE)
    windows = limiter.windows(phone, caller)
    await limiter.acquire(windows, token())
    refusal = await limiter.acquire(windows, token())
    assert refusal is not None
    error = limiter.refusal_error(refusal, phone.masked)
    assert error.reason is Reason.RATE_LIMITED
    assert error.metadata == {"scope": subject.split(":")[0], "limit": "1/60s"}
    assert error.retry_after_s == refusal.retry_after_s
    assert error.quota is not None
    assert error.quota.subject == subject
    assert error.quota.description == f"At most 1/60s sends {description}."
    assert PHONE not in error.message + error.quota.description


# --- end to end, on both stores -----------------------------------------------------------------


async def test_the_per_phone_limit_counts_normalised_numbers_and_says_when_to_retry(
    start_server: StartServer, sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    sandbox.sandbox.enforce_limits = False  # YunPian's own 1-per-30-s rule is not under test
    client = await client_for(start_server, store=store_table, limits={"per_phone": ["2/60s"]})
    async with client:
        await client.send_code("13800138000", "123456")
        await client.send_code("+86 138-0013-8000", "123456")
        with pytest.raises(ResourceExhaustedError) as caught:
            await client.send_code("8613800138000", "123456")
        await client.send_code("13900139000", "123456")  # another number has its own budget
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_delay is not None
    assert 59.0 < error.retry_delay <= 60.0
    [quota] = [d for d in error.details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert quota.violations[0].subject == "phone:138****8000"
    assert len(sandbox.sandbox.messages) == 3


async def test_the_global_limit_covers_every_number(
    start_server: StartServer, sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    client = await client_for(
        start_server, store=store_table, limits={"per_phone": [], "global": ["2/1h"]}
    )
    async with client:
        await client.send_code("13800138000", "123456")
        await client.send_code("13900139000", "123456")
        with pytest.raises(ResourceExhaustedError) as caught:
            await client.send_code("13700137000", "123456")
    assert caught.value.metadata["scope"] == "global"
    assert len(sandbox.sandbox.messages) == 2


async def test_the_per_caller_limit_applies_to_unauthenticated_callers_together(
    start_server: StartServer, store_table: dict[str, Any]
) -> None:
    client = await client_for(
        start_server, store=store_table, limits={"per_phone": [], "per_caller": ["1/1h"]}
    )
    async with client:
        await client.send_code("13800138000", "123456")
        with pytest.raises(ResourceExhaustedError) as caught:
            await client.send_code("13900139000", "123456")
    assert caught.value.metadata["scope"] == "caller"

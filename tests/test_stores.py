"""The two stores behind one interface: in memory and a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from support import RedisServer

from yunpian_sms_server.delivery_state import DeliveryReport, DeliveryState, SentMessage
from yunpian_sms_server.limits import Window, parse_limit
from yunpian_sms_server.stores import (
    ClaimState,
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailableError,
    open_store,
    url_problem,
)


def window(limit: str, subject: str | None = None, scope: str = "phone") -> Window:
    # A fresh subject per test keeps tests apart on the shared Redis.
    return Window(scope, subject or uuid.uuid4().hex, parse_limit(limit))


def token() -> str:
    return uuid.uuid4().hex


async def test_acquire_counts_up_to_the_limit_then_refuses(store: Store) -> None:
    per_minute = window("2/60s")
    assert await store.acquire([per_minute], token()) is None
    assert await store.acquire([per_minute], token()) is None
    refusal = await store.acquire([per_minute], token())
    assert refusal is not None
    assert refusal.window == per_minute
    assert 59.0 < refusal.retry_after_s <= 60.0


async def test_acquire_is_all_or_nothing_across_windows(store: Store) -> None:
    subject = uuid.uuid4().hex
    roomy, full = window("5/60s", subject), window("1/1h", subject)
    assert await store.acquire([full], token()) is None
    refusal = await store.acquire([roomy, full], token())
    assert refusal is not None
    assert refusal.window == full
    assert 3590 < refusal.retry_after_s <= 3600
    # The refused call was not counted in the roomy window: four more still fit.
    for _ in range(4):
        assert await store.acquire([roomy], token()) is None


async def test_refusal_names_the_window_with_the_longest_wait(store: Store) -> None:
    subject = uuid.uuid4().hex
    minute, day = window("1/60s", subject), window("1/1d", subject)
    assert await store.acquire([minute, day], token()) is None
    refusal = await store.acquire([minute, day], token())
    assert refusal is not None
    assert refusal.window == day


async def test_a_slot_frees_when_the_window_slides(store: Store) -> None:
    short = window("1/1s")
    assert await store.acquire([short], token()) is None
    refusal = await store.acquire([short], token())
    assert refusal is not None
    await asyncio.sleep(refusal.retry_after_s + 0.05)
    assert await store.acquire([short], token()) is None


async def test_release_gives_a_token_back(store: Store) -> None:
    per_minute = window("1/60s")
    first = token()
    assert await store.acquire([per_minute], first) is None
    await store.release([per_minute], first)
    assert await store.acquire([per_minute], token()) is None


async def test_concurrent_acquires_never_exceed_the_limit(store: Store) -> None:
    per_minute = window("5/60s")
    results = await asyncio.gather(*(store.acquire([per_minute], token()) for _ in range(40)))
    assert sum(result is None for result in results) == 5


async def test_claim_then_complete_then_replay(store: Store) -> None:
    key = uuid.uuid4().hex
    assert (await store.claim(key, ["fp"], "a", 5.0)).state is ClaimState.NEW
    assert (await store.claim(key, ["fp"], "b", 5.0)).state is ClaimState.PENDING
    assert (await store.claim(key, ["other"], "b", 5.0)).state is ClaimState.MISMATCH
    await store.complete(key, "fp", b"\x00outcome\xff", 60.0)
    claim = await store.claim(key, ["fp"], "b", 5.0)
    assert (claim.state, claim.record) == (ClaimState.DONE, b"\x00outcome\xff")
    assert (await store.claim(key, ["other"], "b", 5.0)).state is ClaimState.MISMATCH


async def test_a_request_matches_under_any_of_its_fingerprints(store: Store) -> None:
    # A fingerprint secret being rotated: requests are hashed under the new and the old one.
    pending, done = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await store.claim(pending, ["old"], "a", 5.0)).state is ClaimState.NEW
    assert (await store.claim(pending, ["new", "old"], "b", 5.0)).state is ClaimState.PENDING
    await store.complete(done, "old", b"outcome", 60.0)
    claim = await store.claim(done, ["new", "old"], "b", 5.0)
    assert (claim.state, claim.record) == (ClaimState.DONE, b"outcome")
    assert (await store.claim(done, ["new"], "b", 5.0)).state is ClaimState.MISMATCH


async def test_only_the_holder_releases_a_claim(store: Store) -> None:
    key = uuid.uuid4().hex
    assert (await store.claim(key, ["fp"], "holder", 5.0)).state is ClaimState.NEW
    await store.release_claim(key, "another")  # the same request, another call: kept
    assert (await store.claim(key, ["fp"], "another", 5.0)).state is ClaimState.PENDING
    await store.release_claim(key, "holder")
    assert (await store.claim(key, ["fp"], "another", 5.0)).state is ClaimState.NEW


async def test_a_recorded_outcome_is_never_released(store: Store) -> None:
    key = uuid.uuid4().hex
    await store.claim(key, ["fp"], "holder", 5.0)
    await store.complete(key, "fp", b"sent", 60.0)
    await store.release_claim(key, "holder")
    assert (await store.claim(key, ["fp"], "later", 5.0)).state is ClaimState.DONE


async def test_claims_and_records_expire(store: Store) -> None:
    lease, record = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await store.claim(lease, ["fp"], "a", 0.1)).state is ClaimState.NEW
    await store.claim(record, ["fp"], "a", 5.0)
    await store.complete(record, "fp", b"x", 0.1)
    await asyncio.sleep(0.2)
    assert (await store.claim(lease, ["fp"], "b", 5.0)).state is ClaimState.NEW
    assert (await store.claim(record, ["fp"], "b", 5.0)).state is ClaimState.NEW


async def test_concurrent_claims_have_one_winner(store: Store) -> None:
    key = uuid.uuid4().hex
    claims = await asyncio.gather(*(store.claim(key, ["fp"], token(), 5.0) for _ in range(20)))
    assert [claim.state for claim in claims].count(ClaimState.NEW) == 1


async def test_redis_store_reports_an_unreachable_server() -> None:
    from support import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailableError):
            await store.acquire([window("1/60s")], token())
        with pytest.raises(StoreUnavailableError):
            await store.claim("k", ["fp"], "holder", 1.0)
        with pytest.raises(StoreUnavailableError):
            await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:6379/0?sockettimeout=1", "has an option redis-py does not know"),
        ("redis://127.0.0.1:6379?db=one", "redis-py refuses it: Invalid value for 'db'"),
    ],
)
def test_url_problem_names_what_redis_py_would_refuse(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None
    assert found.startswith(problem)


def test_url_problem_passes_urls_redis_py_takes() -> None:
    assert url_problem("memory://") is None
    assert url_problem("rediss://user:pw@redis.internal:6380/3?ssl_cert_reqs=none") is None


def test_open_store_picks_the_store_by_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)


async def test_a_burst_beyond_the_redis_connections_waits_its_turn(
    redis_server: RedisServer,
) -> None:
    # redis-py refuses the command past its pool's size ("Too many connections"): that must not
    # look like a Redis failure. 4 connections, 300 operations at once: every one is served.
    store = RedisStore(redis_server.url, max_connections=4)
    try:
        results = await asyncio.gather(
            *(store.acquire([window("1/60s")], token()) for _ in range(150)),
            *(store.claim(uuid.uuid4().hex, ["fp"], token(), 5.0) for _ in range(150)),
            return_exceptions=True,
        )
    finally:
        await store.close()
    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures == []
    assert results[:150] == [None] * 150


async def test_claim_and_acquire_claims_and_counts_together_or_neither(store: Store) -> None:
    key, per_minute = uuid.uuid4().hex, window("1/60s")
    counted = await store.claim_and_acquire(key, ["fp"], "first", 5.0, [per_minute])
    assert (counted.claim.state, counted.refusal) == (ClaimState.NEW, None)
    # The window is full now: a new claim is refused and given up, nothing counted.
    other = uuid.uuid4().hex
    refused = await store.claim_and_acquire(other, ["fp"], "second", 5.0, [per_minute])
    assert refused.claim.state is ClaimState.NEW
    assert refused.refusal is not None
    assert refused.refusal.window == per_minute
    assert (await store.claim(other, ["fp"], "third", 5.0)).state is ClaimState.NEW
    # A claim that is not new counts nothing.
    again = await store.claim_and_acquire(key, ["fp"], "fourth", 5.0, [window("1/60s")])
    assert (again.claim.state, again.refusal) == (ClaimState.PENDING, None)
    await store.complete(key, "fp", b"sent", 60.0)
    done = await store.claim_and_acquire(key, ["fp"], "fifth", 5.0, [per_minute])
    assert (done.claim.state, done.claim.record, done.refusal) == (ClaimState.DONE, b"sent", None)
    mismatch = await store.claim_and_acquire(key, ["other"], "sixth", 5.0, [per_minute])
    assert mismatch.claim.state is ClaimState.MISMATCH


async def test_release_gives_a_token_back_from_every_window(store: Store) -> None:
    subject = uuid.uuid4().hex
    windows = [window("1/60s", subject), window("2/1h", subject)]
    assert await store.acquire(windows, "sent-nothing") is None
    await store.release(windows, "sent-nothing")
    assert await store.acquire(windows, "next") is None


def sent(caller: str = "alice") -> SentMessage:
    # A fresh sid per test keeps tests apart on the shared Redis.
    return SentMessage(str(uuid.uuid4().int % 10**18), caller, sent_at=time.time() - 2.0)


def report_of(
    message: SentMessage, state: DeliveryState = DeliveryState.DELIVERED
) -> DeliveryReport:
    return DeliveryReport(message.message_id, state, "DELIVRD", "", received_at=time.time() - 1.0)


async def test_a_report_is_saved_once_and_read_back_with_its_caller(store: Store) -> None:
    message = sent()
    await store.record_message(message, keep_s=60.0)
    first = report_of(message)
    saved = await store.save_reports([first], keep_s=60.0)
    again = await store.save_reports([report_of(message, DeliveryState.FAILED)], keep_s=60.0)
    found = await store.get_message(message.message_id)
    assert [m.message_id for m in saved.saved] == [message.message_id]
    assert (saved.duplicates, saved.unknown) == (0, 0)
    assert (again.saved, again.duplicates, again.unknown) == ((), 1, 0)
    assert found is not None
    assert (found.caller, found.state, found.carrier_code) == ("alice", first.state, "DELIVRD")
    assert found.received_at == pytest.approx(first.received_at, abs=0.001)
    assert found.sent_at == pytest.approx(message.sent_at, abs=0.001)


@pytest.mark.parametrize("recorded_by", ["record_message", "complete"])
async def test_a_report_that_comes_before_its_message_is_taken_in_when_it_is_recorded(
    store: Store, recorded_by: str
) -> None:
    # YunPian can report before the replica that sent the SMS has recorded it: the report waits.
    message, other = sent(), sent()
    early = report_of(message, DeliveryState.FAILED)
    saved = await store.save_reports([early, report_of(other)], keep_s=60.0)
    assert (saved.saved, saved.duplicates, saved.unknown) == ((), 0, 2)
    assert await store.get_message(message.message_id) is None
    if recorded_by == "record_message":
        await store.record_message(message, keep_s=60.0)
    else:
        key = uuid.uuid4().hex
        await store.complete(key, "fp", b"record", 60.0, message=message, message_keep_s=60.0)
    found = await store.get_message(message.message_id)
    assert found is not None
    assert (found.caller, found.state) == ("alice", DeliveryState.FAILED)
    assert found.received_at == pytest.approx(early.received_at, abs=0.001)
    # Taken in once: a later report of it is a duplicate, and the other report still waits.
    later = await store.save_reports([report_of(message)], keep_s=60.0)
    assert (later.saved, later.duplicates) == ((), 1)
    assert await store.get_message(other.message_id) is None


async def test_recording_a_message_again_keeps_the_report_it_took_in(store: Store) -> None:
    # A settle interrupted after the store ran it runs again: the second recording is a no-op.
    message = sent()
    early = report_of(message, DeliveryState.FAILED)
    await store.save_reports([early], keep_s=60.0)
    first = await store.record_message(message, keep_s=60.0)
    again = await store.record_message(message, keep_s=60.0)
    key = uuid.uuid4().hex
    by_complete = await store.complete(key, "fp", b"r", 60.0, message=message, message_keep_s=60.0)
    found = await store.get_message(message.message_id)
    assert first is not None
    assert (first.message_id, first.caller, first.state) == (
        message.message_id,
        "alice",
        DeliveryState.FAILED,
    )
    assert first.received_at == pytest.approx(early.received_at, abs=0.001)
    assert (again, by_complete) == (None, None)
    assert found is not None
    assert found.state is DeliveryState.FAILED
    # Without a waiting report, recording returns nothing, and the message stays pending.
    plain = sent()
    assert await store.record_message(plain, keep_s=60.0) is None
    assert await store.complete(uuid.uuid4().hex, "fp", b"r", 60.0) is None


async def test_of_reports_that_come_before_their_message_the_first_waits(store: Store) -> None:
    message = sent()
    first, second = report_of(message, DeliveryState.FAILED), report_of(message)
    one = await store.save_reports([first], keep_s=60.0)
    two = await store.save_reports([second], keep_s=60.0)
    taken_in = await store.record_message(message, keep_s=60.0)
    assert (one.unknown, two.unknown) == (1, 1)
    assert taken_in is not None
    assert taken_in.state is DeliveryState.FAILED  # as for a recorded message: the first wins

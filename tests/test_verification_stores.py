"""The verification operations of both stores, in memory and in a real Redis: the same answers.

Each operation is atomic on its own; these tests hold each to the interface's word, including
the clock (a pending verification past its expiry has expired, whoever looks first), the limits
(max_sends, max_checks, even under parallel calls) and forgetting (an ended verification is kept
`keep_s`, then gone, in Redis with a TTL on every key).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

import redis.asyncio as aioredis
from support import RedisServer

from yunpian_sms_server.stores import CheckUse, CodeAdded, RedisStore, Store
from yunpian_sms_server.stores.redis_store import (
    PENDING_VERIFICATION_PREFIX,
    VERIFICATION_PREFIX,
)
from yunpian_sms_server.verification_state import (
    VerificationState,
    VerificationStatus,
    new_verification_id,
)

TTL_S: Final = 60.0
KEEP_S: Final = 60.0
MAX_CHECKS: Final = 5
MAX_SENDS: Final = 3
CALLER: Final = "caller-a"
# A short life, and how long to wait past it (the stores' clocks have millisecond steps).
SHORT_S: Final = 0.1
PAST_S: Final = 0.05


def fresh(caller: str = CALLER) -> VerificationState:
    return VerificationState(
        verification_id=new_verification_id(),
        caller=caller,
        phone="13800138000",
        usage_type="SignIn",
        status=VerificationStatus.PENDING,
        expires_at=0.0,
        max_checks=MAX_CHECKS,
    )


def pending_key() -> str:
    # A key of its own per test keeps tests apart on the shared Redis.
    return f"{CALLER}\x1f{uuid.uuid4().hex}\x1fSignIn"


def code_hash() -> str:
    return uuid.uuid4().hex * 2  # 64 hex characters, like an HMAC-SHA256


async def opened(
    store: Store, ttl_s: float = TTL_S, keep_s: float = KEEP_S, key: str | None = None
) -> VerificationState:
    """A new pending verification with one code sent."""
    state = await store.open_verification(key or pending_key(), fresh(), ttl_s, keep_s)
    added, _ = await store.add_verification_code(state.verification_id, code_hash(), 5, keep_s)
    assert added is CodeAdded.ADDED
    return state


async def test_open_stores_a_fresh_verification_and_then_answers_the_pending_one(
    store: Store,
) -> None:
    key = pending_key()
    first_fresh, second_fresh = fresh(), fresh()
    before = time.time()
    first = await store.open_verification(key, first_fresh, TTL_S, KEEP_S)
    second = await store.open_verification(key, second_fresh, TTL_S, KEEP_S)
    other = await store.open_verification(pending_key(), fresh(), TTL_S, KEEP_S)
    assert first.verification_id == second.verification_id == first_fresh.verification_id
    assert other.verification_id != first.verification_id
    assert first.status is VerificationStatus.PENDING
    assert (first.caller, first.phone, first.usage_type) == (CALLER, "13800138000", "SignIn")
    assert (first.send_count, first.checks_used, first.max_checks) == (0, 0, MAX_CHECKS)
    assert before + TTL_S - 1 <= first.expires_at <= time.time() + TTL_S + 0.01
    assert second.expires_at == first.expires_at
    assert await store.find_pending_verification(key) == first.verification_id


async def test_codes_are_added_up_to_max_sends_and_withdrawn_once(store: Store) -> None:
    state = await store.open_verification(pending_key(), fresh(), TTL_S, KEEP_S)
    vid = state.verification_id
    hashes = [code_hash() for _ in range(MAX_SENDS + 1)]
    answers = [await store.add_verification_code(vid, h, MAX_SENDS, KEEP_S) for h in hashes]
    assert [added for added, _ in answers] == [CodeAdded.ADDED] * MAX_SENDS + [CodeAdded.SEND_LIMIT]
    assert [after.send_count for _, after in answers if after] == [1, 2, 3, 3]
    last = answers[MAX_SENDS - 1][1]
    assert last is not None
    assert last.code_hashes == tuple(hashes[:MAX_SENDS])
    # A code never sent is forgotten with its send, once; an unknown hash changes nothing.
    await store.withdraw_verification_code(vid, hashes[1])
    await store.withdraw_verification_code(vid, hashes[1])
    await store.withdraw_verification_code(vid, code_hash())
    after = await store.get_verification(vid, KEEP_S)
    assert after is not None
    assert after.send_count == MAX_SENDS - 1
    assert after.code_hashes == (hashes[0], hashes[2])
    added, _ = await store.add_verification_code(vid, hashes[3], MAX_SENDS, KEEP_S)
    assert added is CodeAdded.ADDED


async def test_no_code_is_added_to_an_ended_or_unknown_verification(store: Store) -> None:
    state = await opened(store)
    await store.end_verification(state.verification_id, VerificationStatus.CANCELED, KEEP_S)
    added, after = await store.add_verification_code(
        state.verification_id, code_hash(), MAX_SENDS, KEEP_S
    )
    assert added is CodeAdded.ENDED
    assert after is not None
    assert after.status is VerificationStatus.CANCELED
    assert after.code_hashes == ()
    unknown = await store.add_verification_code(
        new_verification_id(), code_hash(), MAX_SENDS, KEEP_S
    )
    assert unknown == (CodeAdded.ENDED, None)


async def test_wrong_checks_are_counted_up_to_max_checks_and_only_for_the_owner(
    store: Store,
) -> None:
    state = await opened(store)
    vid = state.verification_id
    wrong = [code_hash()]
    stranger = [
        await store.use_verification_check(vid, "caller-b", wrong, KEEP_S) for _ in range(3)
    ]
    assert stranger == [(CheckUse.UNKNOWN, None)] * 3
    assert await store.use_verification_check(new_verification_id(), CALLER, wrong, KEEP_S) == (
        CheckUse.UNKNOWN,
        None,
    )
    uses = [
        await store.use_verification_check(vid, CALLER, wrong, KEEP_S)
        for _ in range(MAX_CHECKS + 2)
    ]
    assert [use for use, _ in uses] == [CheckUse.WRONG] * MAX_CHECKS + [CheckUse.ENDED] * 2
    assert [after.checks_remaining for _, after in uses if after] == [4, 3, 2, 1, 0, 0, 0]
    statuses = [after.status for _, after in uses if after]
    # The last wrong check ends it in the same step: none is left pending with no check.
    assert (
        statuses
        == [VerificationStatus.PENDING] * (MAX_CHECKS - 1)
        + [VerificationStatus.MAX_ATTEMPTS_REACHED] * 3
    )
    assert [bool(after.code_hashes) for _, after in uses if after] == [True] * 4 + [False] * 3


async def test_a_right_code_approves_in_the_check_that_uses_it(store: Store) -> None:
    state = await store.open_verification(pending_key(), fresh(), TTL_S, KEEP_S)
    vid = state.verification_id
    sent = [code_hash() for _ in range(2)]
    for code in sent:
        await store.add_verification_code(vid, code, MAX_SENDS, KEEP_S)
    for _ in range(MAX_CHECKS - 1):
        await store.use_verification_check(vid, CALLER, [code_hash()], KEEP_S)
    # The last check left, with the first code sent, typed under a second secret too.
    use, after = await store.use_verification_check(vid, CALLER, [code_hash(), sent[0]], KEEP_S)
    again, later = await store.use_verification_check(vid, CALLER, [sent[1]], KEEP_S)
    assert use is CheckUse.APPROVED
    assert after is not None
    assert (after.status, after.checks_used, after.code_hashes) == (
        VerificationStatus.APPROVED,
        MAX_CHECKS,
        (),
    )
    assert again is CheckUse.ENDED
    assert later is not None
    assert later.status is VerificationStatus.APPROVED


async def test_of_parallel_checks_max_checks_are_used_and_one_right_code_approves(
    store: Store,
) -> None:
    state = await store.open_verification(pending_key(), fresh(), TTL_S, KEEP_S)
    vid = state.verification_id
    right = code_hash()
    await store.add_verification_code(vid, right, MAX_SENDS, KEEP_S)
    # 40 checks at once, the right code twice among wrong ones: each is counted in turn, the
    # first right one counted within max_checks approves, and nothing after it is used.
    typed = [[code_hash()] for _ in range(40)]
    typed[1] = typed[30] = [right]
    uses = await asyncio.gather(
        *(store.use_verification_check(vid, CALLER, hashes, KEEP_S) for hashes in typed)
    )
    # In the order the store counted them (Redis may take them in another order than sent).
    counted = sorted(
        (after.checks_used, use, hashes == [right])
        for (use, after), hashes in zip(uses, typed, strict=True)
        if use is not CheckUse.ENDED and after
    )
    assert [used for used, _, _ in counted] == list(range(1, len(counted) + 1))
    first_right = next((used for used, _, is_right in counted if is_right), None)
    after = await store.get_verification(vid, KEEP_S)
    assert after is not None
    if first_right is None:  # five wrong codes were counted before either right one
        assert len(counted) == MAX_CHECKS
        assert after.status is VerificationStatus.MAX_ATTEMPTS_REACHED
    else:
        assert len(counted) == first_right <= MAX_CHECKS
        assert [use for _, use, _ in counted] == [CheckUse.WRONG] * (first_right - 1) + [
            CheckUse.APPROVED
        ]
        assert after.status is VerificationStatus.APPROVED


async def test_parallel_wrong_checks_use_exactly_max_checks(store: Store) -> None:
    state = await opened(store)
    uses = await asyncio.gather(
        *(
            store.use_verification_check(state.verification_id, CALLER, [code_hash()], KEEP_S)
            for _ in range(40)
        )
    )
    counted = [after.checks_used for use, after in uses if use is CheckUse.WRONG and after]
    assert sorted(counted) == list(range(1, MAX_CHECKS + 1))
    assert sum(use is CheckUse.ENDED for use, _ in uses) == 40 - MAX_CHECKS


async def test_an_end_is_final_and_forgets_the_codes(store: Store) -> None:
    key = pending_key()
    state = await opened(store, key=key)
    vid = state.verification_id
    ended, ended_now = await store.end_verification(vid, VerificationStatus.APPROVED, KEEP_S)
    again, again_now = await store.end_verification(vid, VerificationStatus.CANCELED, KEEP_S)
    assert (ended_now, again_now) == (True, False)
    for after in (ended, again, await store.get_verification(vid, KEEP_S)):
        assert after is not None
        assert after.status is VerificationStatus.APPROVED
        assert after.code_hashes == ()
    assert await store.find_pending_verification(key) is None
    use, after = await store.use_verification_check(vid, CALLER, [code_hash()], KEEP_S)
    assert use is CheckUse.ENDED
    assert after is not None
    assert after.checks_used == 0  # an ended verification's checks are not used
    unknown = await store.end_verification(
        new_verification_id(), VerificationStatus.APPROVED, KEEP_S
    )
    assert unknown == (None, False)
    # The number's next verification is a new one.
    reopened = await store.open_verification(key, fresh(), TTL_S, KEEP_S)
    assert reopened.verification_id != vid


async def test_a_verification_past_its_expiry_has_expired_whoever_looks(store: Store) -> None:
    keys = [pending_key() for _ in range(4)]
    states = [await opened(store, ttl_s=SHORT_S, key=key) for key in keys]
    await asyncio.sleep(SHORT_S + PAST_S)
    # No pending verification of the number is left, before anyone has looked at it.
    assert [await store.find_pending_verification(key) for key in keys] == [None] * 4
    ids = [state.verification_id for state in states]
    use, checked = await store.use_verification_check(ids[0], CALLER, [code_hash()], KEEP_S)
    seen = await store.get_verification(ids[1], KEEP_S)
    ended, approved = await store.end_verification(ids[2], VerificationStatus.APPROVED, KEEP_S)
    added, adding = await store.add_verification_code(ids[3], code_hash(), MAX_SENDS, KEEP_S)
    assert use is CheckUse.EXPIRED_NOW
    assert added is CodeAdded.ENDED
    assert not approved  # it had expired: not ended as asked
    for after in (checked, seen, ended, adding):
        assert after is not None
        assert after.status is VerificationStatus.EXPIRED
        assert after.code_hashes == ()
    assert checked is not None
    assert checked.checks_used == 0
    # Only the first look ends it: the next check finds it ended.
    check = await store.use_verification_check(ids[0], CALLER, [code_hash()], KEEP_S)
    assert check[0] is CheckUse.ENDED
    reopened = await store.open_verification(keys[0], fresh(), TTL_S, KEEP_S)
    assert reopened.verification_id not in ids


async def test_of_parallel_ends_exactly_one_ends_it(store: Store) -> None:
    state = await opened(store)
    answers = await asyncio.gather(
        *(
            store.end_verification(state.verification_id, status, KEEP_S)
            for status in [VerificationStatus.APPROVED, VerificationStatus.CANCELED] * 10
        )
    )
    winners = [after for after, ended_now in answers if ended_now]
    assert len(winners) == 1
    assert winners[0] is not None
    assert {after.status for after, _ in answers if after} == {winners[0].status}


async def test_an_ended_verification_is_kept_keep_s_then_forgotten(store: Store) -> None:
    expiring = await opened(store, ttl_s=SHORT_S, keep_s=SHORT_S)
    approved = await opened(store, keep_s=SHORT_S)
    await store.end_verification(approved.verification_id, VerificationStatus.APPROVED, SHORT_S)
    assert await store.get_verification(approved.verification_id, SHORT_S) is not None
    await asyncio.sleep(2 * SHORT_S + PAST_S)
    for vid in (expiring.verification_id, approved.verification_id):
        assert await store.get_verification(vid, SHORT_S) is None
        check = await store.use_verification_check(vid, CALLER, [code_hash()], SHORT_S)
        assert check == (CheckUse.UNKNOWN, None)


async def test_the_message_id_is_noted_and_an_unknown_verification_is_not_made(
    store: Store,
) -> None:
    state = await opened(store)
    await store.note_verification_message(state.verification_id, "9007199254741993")
    after = await store.get_verification(state.verification_id, KEEP_S)
    assert after is not None
    assert after.message_id == "9007199254741993"
    unknown = new_verification_id()
    await store.note_verification_message(unknown, "1")
    assert await store.get_verification(unknown, KEEP_S) is None


async def test_every_redis_key_of_a_verification_expires(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        key = pending_key()
        state = await opened(store, ttl_s=TTL_S, keep_s=KEEP_S, key=key)
        vid = state.verification_id
        names = [VERIFICATION_PREFIX + vid, PENDING_VERIFICATION_PREFIX + key]
        pending_ttls = [await redis.pttl(name) for name in names]
        await store.end_verification(vid, VerificationStatus.CANCELED, KEEP_S)
        ended_ttl = await redis.pttl(VERIFICATION_PREFIX + vid)
        pending_left = await redis.exists(PENDING_VERIFICATION_PREFIX + key)
    finally:
        await redis.aclose()
        await store.close()
    # The verification until its expiry and keep_s after; its pending key until its expiry.
    assert (TTL_S + KEEP_S - 1) * 1000 < pending_ttls[0] <= (TTL_S + KEEP_S) * 1000
    assert (TTL_S - 1) * 1000 < pending_ttls[1] <= TTL_S * 1000
    # Ended: kept keep_s from now, its pending key gone.
    assert (KEEP_S - 1) * 1000 < ended_ttl <= KEEP_S * 1000
    assert pending_left == 0

"""Two `yunpian-sms serve` processes on one real Redis: one verification, wherever it is asked.

A code sent by one replica checks at the other; guesses and right codes sent to both at once
are counted against one limit and approve once; starts at both at once make one verification
with at most max_sends SMS.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Final

import grpc
import pytest
from support import BASE_CONFIG, RedisServer, StartServe, fresh_database
from verification_support import (
    code_of,
    phone_numbers,
    reason,
    redis_store,
    verifier,
    verify_section,
    wrong_code,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, RunningSandbox

REDIS_DB: Final = 13
MAX_CHECKS: Final = 5
MAX_SENDS: Final = 5
GUESSES: Final = 50
RACE_ROUNDS: Final = 20
NUMBERS: Final = phone_numbers("134")


def replica_config(sandbox: RunningSandbox, store_url: str) -> dict[str, Any]:
    return {
        **BASE_CONFIG,
        "server": {"grace_period_seconds": 1.0},
        "yunpian": {"api_key": SANDBOX_API_KEY, "base_url": sandbox.url, "timeout_seconds": 2.0},
        "store": redis_store(store_url),
        # The same secret at every replica: a code hashed at one checks at the other.
        "verify": verify_section(max_checks=MAX_CHECKS, max_sends=MAX_SENDS),
    }


def wrong_codes(right: str, count: int) -> list[str]:
    """`count` different codes, none of them `right`."""
    codes: list[str] = []
    while len(codes) < count:
        codes.append(wrong_code(right, *codes))
    return codes


async def test_two_replicas_share_each_verification_its_checks_and_its_sends(
    start_serve: StartServe, sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    sandbox.sandbox.enforce_limits = False
    config = replica_config(sandbox, await fresh_database(redis_server, REDIS_DB))
    replica_a, replica_b = await asyncio.gather(start_serve(config), start_serve(config))
    async with verifier(replica_a.port) as at_a, verifier(replica_b.port) as at_b:
        both = (at_a, at_b)

        # Started at A, checked at B.
        started = await at_a.start(next(NUMBERS))
        across = await at_b.check(started.verification_id, code_of(sandbox, started))

        # Fifty wrong guesses at once, half at each replica.
        guessed = await at_b.start(next(NUMBERS))
        right = code_of(sandbox, guessed)
        guesses = await asyncio.gather(
            *(
                both[index % 2].check(guessed.verification_id, code)
                for index, code in enumerate(wrong_codes(right, GUESSES))
            ),
            return_exceptions=True,
        )
        with pytest.raises(grpc.aio.AioRpcError) as after_guesses:
            await at_a.check(guessed.verification_id, right)

        # The right code twenty times at once, half at each replica; in rounds, since the race
        # this plays (counted together, compared together) is won by chance.
        rounds: list[list[object]] = []
        for _ in range(RACE_ROUNDS):
            raced = await at_a.start(next(NUMBERS))
            code = code_of(sandbox, raced)
            rounds.append(
                await asyncio.gather(
                    *(both[index % 2].check(raced.verification_id, code) for index in range(20)),
                    return_exceptions=True,
                )
            )

        # Twelve starts for one number at once, half at each replica.
        phone = next(NUMBERS)
        starts = await asyncio.gather(
            *(both[index % 2].start(phone) for index in range(12)), return_exceptions=True
        )

    assert across.approved
    assert across.verification.status == pb.VERIFICATION_STATUS_APPROVED

    answered = [g for g in guesses if isinstance(g, pb.CheckVerificationResponse)]
    refused = [g for g in guesses if isinstance(g, grpc.aio.AioRpcError)]
    print(  # figures for the record (pytest -s)
        f"\n{GUESSES} parallel wrong guesses over 2 replicas: {len(answered)} approved=false, "
        f"{Counter(reason(error)[1] for error in refused)}"
    )
    assert len(answered) + len(refused) == GUESSES, guesses
    assert not any(answer.approved for answer in answered)
    assert len(answered) == MAX_CHECKS
    assert sorted(a.verification.checks_remaining for a in answered) == [0, 1, 2, 3, 4]
    assert [a.verification.status for a in answered].count(
        pb.VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED
    ) == 1
    assert {reason(error) for error in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "VERIFICATION_MAX_ATTEMPTS")
    }
    # Even the right code, now.
    assert reason(after_guesses.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERIFICATION_MAX_ATTEMPTS",
    )

    approvals = [
        sum(isinstance(r, pb.CheckVerificationResponse) and r.approved for r in rights)
        for rights in rounds
    ]
    print(f"20 parallel right codes over 2 replicas, approvals per round: {approvals}")
    assert approvals == [1] * RACE_ROUNDS
    # The others: approved already, or (not counted: max_checks were in flight) no check left.
    assert {
        reason(r) for rights in rounds for r in rights if isinstance(r, grpc.aio.AioRpcError)
    } <= {
        (grpc.StatusCode.FAILED_PRECONDITION, "VERIFICATION_APPROVED"),
        (grpc.StatusCode.FAILED_PRECONDITION, "VERIFICATION_MAX_ATTEMPTS"),
    }
    assert all(
        isinstance(r, pb.CheckVerificationResponse | grpc.aio.AioRpcError)
        for rights in rounds
        for r in rights
    )

    sent = [s for s in starts if isinstance(s, pb.Verification)]
    limited = [s for s in starts if isinstance(s, grpc.aio.AioRpcError)]
    assert len({s.verification_id for s in sent}) == 1
    assert sorted(s.send_count for s in sent) == list(range(1, MAX_SENDS + 1))
    assert {reason(error) for error in limited} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFICATION_SEND_LIMIT")
    }
    assert len(sandbox.sandbox.messages_to(phone)) == MAX_SENDS

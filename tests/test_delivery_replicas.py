"""Two `yunpian-sms serve` processes pulling delivery reports from one sandbox into one real
Redis: every report YunPian hands out is saved exactly once; when the pulling replica is stopped
with SIGTERM it saves the page in hand and lets go of the lease, so nothing is lost and the other
takes over at once; when it is killed (SIGKILL) the other takes over within the lease, and the
only reports that can be lost are those of the one page the killed replica had taken and not
yet saved (YunPian hands each report out once): the test measures them.

Each test owns a Redis database (flushed first) and uses its own numbers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    BASE_CONFIG,
    FINGERPRINT_SECRET,
    RedisServer,
    Samples,
    ServeProcess,
    StartServe,
    free_port,
    fresh_database,
    value,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.sandbox import PULL_STATUS_PATH, SANDBOX_API_KEY, Fault, RunningSandbox

CODE = "123456"
PULL_INTERVAL_S = 0.1
PAGE_SIZE = 10
# How long a test waits for the reports the sandbox has made available to be pulled and saved.
SETTLE_WITHIN_S = 15.0
_numbers = itertools.count()


def next_mobile() -> str:
    return f"1380013{next(_numbers) % 10_000:04d}"


class Replica:
    """A serve process with its metrics port."""

    def __init__(self, process: ServeProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_port = metrics_port

    async def samples(self) -> Samples:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def pulls(self) -> float:
        """The pulls this replica has made (it pulls only while it holds the lease)."""
        samples = await self.samples()
        return sum(
            count
            for (name, _), count in samples.items()
            if name == "yunpian_sms_delivery_pulls_total"
        )

    async def saved(self) -> dict[str, float]:
        samples = await self.samples()
        return {
            state: value(samples, "yunpian_sms_delivery_reports_total", state=state)
            for state in ("DELIVERED", "FAILED", "duplicate", "unknown")
        }


async def start_replica(
    start_serve: StartServe, sandbox: RunningSandbox, store_url: str, lease_s: float
) -> Replica:
    metrics_port = free_port()
    config: dict[str, Any] = {
        **BASE_CONFIG,
        "server": {
            "grace_period_seconds": 1.0,
            "drain_seconds": 0.0,
            "metrics_listen": f"127.0.0.1:{metrics_port}",
        },
        "yunpian": {"api_key": SANDBOX_API_KEY, "base_url": sandbox.url, "timeout_seconds": 3.0},
        "limits": {"per_phone": []},
        "store": {"url": store_url, "fingerprint_secret": FINGERPRINT_SECRET},
        "delivery": {
            "mode": "pull",
            "pull_interval_seconds": PULL_INTERVAL_S,
            "pull_lease_seconds": lease_s,
            "page_size": PAGE_SIZE,
            "report_wait_seconds": 300.0,
        },
    }
    return Replica(await start_serve(config), metrics_port)


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's per-number limits."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


@asynccontextmanager
async def stubs(*replicas: Replica) -> AsyncIterator[list[pb_grpc.SmsServiceStub]]:
    channels = [grpc.aio.insecure_channel(r.process.target) for r in replicas]
    try:
        yield [pb_grpc.SmsServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


async def send_many(stub: pb_grpc.SmsServiceStub, count: int) -> list[str]:
    """Sends `count` SMS, 10 at a time; their message ids."""
    sent: list[str] = []
    for start in range(0, count, 10):
        requests = [
            pb.SendCodeRequest(phone_number=next_mobile(), code=CODE)
            for _ in range(min(10, count - start))
        ]
        answers = await asyncio.gather(*(stub.SendCode(r, timeout=10.0) for r in requests))
        sent.extend(answer.message_id for answer in answers)
    return sent


async def states_of(
    stub: pb_grpc.SmsServiceStub, message_ids: Sequence[str]
) -> dict[str, pb.DeliveryState.ValueType]:
    states = {}
    for message_id in message_ids:
        request = pb.GetDeliveryStatusRequest(message_id=message_id)
        states[message_id] = (await stub.GetDeliveryStatus(request, timeout=5.0)).state
    return states


async def all_handed_out(sandbox: RunningSandbox, sent: int) -> None:
    """Waits until the sandbox has handed out the report of every message sent."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while sandbox.sandbox.report_stats.pulled < sent or sandbox.sandbox.pending_reports:
        assert time.monotonic() < deadline, sandbox.sandbox.report_stats
        await asyncio.sleep(0.05)


async def first_pull_after(replica: Replica, since: float) -> float:
    """Seconds from `since` (monotonic) to the replica's first pull (polling its metrics)."""
    deadline = since + SETTLE_WITHIN_S
    while await replica.pulls() == 0:
        assert time.monotonic() < deadline, "the other replica never took the pull over"
        await asyncio.sleep(0.02)
    return time.monotonic() - since


async def two_replicas(
    start_serve: StartServe, sandbox: RunningSandbox, store_url: str, lease_s: float
) -> tuple[Replica, Replica]:
    """Two replicas, started together: (the one that took the pull lease, the other)."""
    replicas = await asyncio.gather(
        start_replica(start_serve, sandbox, store_url, lease_s),
        start_replica(start_serve, sandbox, store_url, lease_s),
    )
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while True:
        pulls = [await replica.pulls() for replica in replicas]
        if any(pulls):
            break
        assert time.monotonic() < deadline, "no replica pulls"
        await asyncio.sleep(0.02)
    # Only the holder of the lease pulls, and it renews it long before it lapses.
    assert pulls.count(0) == 1, pulls
    first, second = replicas
    return (first, second) if pulls[0] else (second, first)


async def fault_taken(sandbox: RunningSandbox) -> None:
    """Waits until the injected fault has met its request."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while sandbox.sandbox.pending_faults:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def total(saved: dict[str, float]) -> float:
    return saved["DELIVERED"] + saved["FAILED"]


async def test_replicas_save_every_report_once_and_sigterm_hands_the_pull_over_losing_none(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    # A lease far longer than the takeover: the other replica can only take over that soon if
    # the stopped one let go of it.
    lease_s = 10.0
    account = quiet_sandbox.sandbox
    # Reports come 0.5 s after their sends: after the sending replica has recorded the message
    # even on a busy machine (a report before its record is dropped: see test_delivery_reports).
    account.configure_reports(delay_seconds=0.5, failure_share=0.25)
    url = await fresh_database(redis_server, 12)
    pulling, other = await two_replicas(start_serve, quiet_sandbox, url, lease_s)
    async with stubs(pulling, other) as (at_pulling, at_other):
        # Both replicas send; one pulls; every report handed out is saved once.
        before = [*await send_many(at_pulling, 20), *await send_many(at_other, 20)]
        await all_handed_out(quiet_sandbox, len(before))
        deadline = time.monotonic() + SETTLE_WITHIN_S
        while total(saved_before := await pulling.saved()) < len(before):
            assert time.monotonic() < deadline, saved_before
            await asyncio.sleep(0.05)
        other_before = await other.saved()

        # The next pull is answered 2 s late: the pulling replica gets SIGTERM while it waits
        # for that page, which then holds reports of `during` (sent meanwhile, due 0.5 s on).
        account.inject(Fault(kind="delay", seconds=2.0, path=PULL_STATUS_PATH))
        await fault_taken(quiet_sandbox)
        pulls_before_stop = account.report_stats.pulls
        stopped_at = time.monotonic()
        pulling.process.terminate()
        during = await send_many(at_other, 25)
        exit_status = await pulling.process.wait(15.0)
        exited_after_s = time.monotonic() - stopped_at
        takeover_s = await first_pull_after(other, stopped_at)

        after = await send_many(at_other, 20)
        sent = before + during + after
        await all_handed_out(quiet_sandbox, len(sent))
        deadline = time.monotonic() + SETTLE_WITHIN_S
        while pb.DELIVERY_STATE_PENDING in (states := await states_of(at_other, sent)).values():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        saved_by_other = await other.saved()
    stats = account.report_stats
    page_in_hand = stats.pull_sizes[pulls_before_stop]
    print(  # the figures of the report (pytest -s shows them)
        f"\nSIGTERM: {len(sent)} sent, {stats.pulled} handed out, "
        f"{total(saved_before)} + {page_in_hand} (page in hand) saved by the stopped replica, "
        f"{total(saved_by_other)} by the other; exited after {exited_after_s:.2f} s, "
        f"the other pulled after {takeover_s:.2f} s (lease {lease_s:.0f} s)"
    )
    assert exit_status == 0
    # Before the stop: 40 handed out, 40 saved, by the replica that holds the lease.
    assert saved_before == {"DELIVERED": 30, "FAILED": 10, "duplicate": 0, "unknown": 0}
    assert total(other_before) == 0
    # The page in hand was taken 2 s after the SIGTERM; the replica saved it, then exited.
    assert page_in_hand == PAGE_SIZE
    assert exited_after_s >= 1.9
    assert takeover_s < lease_s / 2
    # Every report handed out was saved, exactly once: none lost, none twice.
    assert stats.pulled == len(sent)
    assert total(saved_before) + page_in_hand + total(saved_by_other) == len(sent)
    assert saved_by_other["duplicate"] == saved_by_other["unknown"] == 0
    assert pb.DELIVERY_STATE_PENDING not in states.values()
    failed = sum(state == pb.DELIVERY_STATE_FAILED for state in states.values())
    assert failed == len(sent) // 4


async def test_sigkill_the_other_replica_takes_over_within_the_lease(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    lease_s = 1.0
    account = quiet_sandbox.sandbox
    account.configure_reports(delay_seconds=0.5)
    url = await fresh_database(redis_server, 13)
    pulling, other = await two_replicas(start_serve, quiet_sandbox, url, lease_s)
    sent: list[str] = []
    sent_after_kill: list[str] = []
    killed = asyncio.Event()

    async with stubs(other) as (stub,):

        async def keep_sending(seconds: float) -> None:
            """A steady flow of SMS through the replica that survives."""
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                ids = await send_many(stub, 2)
                (sent_after_kill if killed.is_set() else sent).extend(ids)
                await asyncio.sleep(0.02)

        flow = asyncio.create_task(keep_sending(3.0))
        await asyncio.sleep(1.2)
        pulled_at_kill = account.report_stats.pulled
        killed_at = time.monotonic()
        pulling.process.process.kill()
        killed.set()
        takeover_s = await first_pull_after(other, killed_at)
        await flow
        everything = sent + sent_after_kill
        await all_handed_out(quiet_sandbox, len(everything))
        deadline = time.monotonic() + SETTLE_WITHIN_S
        # The other replica saves the last page it took.
        while total(saved_by_other := await other.saved()) < len(sent_after_kill):
            assert time.monotonic() < deadline, saved_by_other
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        states = await states_of(stub, everything)
        saved_by_other = await other.saved()
    pending = [m for m in everything if states[m] == pb.DELIVERY_STATE_PENDING]
    lost = account.report_stats.pulled - (len(everything) - len(pending))
    print(  # the figures of the report (pytest -s shows them)
        f"\nSIGKILL: {len(everything)} sent ({len(sent_after_kill)} after the kill), "
        f"{pulled_at_kill} handed out before it, {account.report_stats.pulled} in all; "
        f"lost {lost}; the other pulled after {takeover_s:.2f} s (lease {lease_s:.0f} s)"
    )
    assert pulled_at_kill > 0, "the killed replica was pulling"
    assert sent_after_kill, "the flow went on after the kill"
    assert takeover_s <= lease_s + PULL_INTERVAL_S + 1.0
    assert account.report_stats.pulled == len(everything)
    # What the killed replica had taken and not saved is gone: at most the page in its hands.
    assert lost == len(pending) <= PAGE_SIZE
    # The other kept pulling and saving after the kill: every later message's report is saved.
    assert all(states[m] == pb.DELIVERY_STATE_DELIVERED for m in sent_after_kill)
    assert saved_by_other["duplicate"] == saved_by_other["unknown"] == 0

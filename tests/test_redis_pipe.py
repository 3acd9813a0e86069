"""The one pipelined connection every Redis operation of a server shares: each reply reaches its
own caller whatever the others do (cancelled, failed, timed out), a Redis that stops answering
or restarts fails the calls waiting on it and is used again once back, and nothing hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from support import RedisServer

from yunpian_sms_server.limits import Window, parse_limit
from yunpian_sms_server.stores import ClaimState, StoreUnavailableError
from yunpian_sms_server.stores.redis_pipe import REDIS_TIMEOUT_S, RedisPipe, pack
from yunpian_sms_server.stores.redis_store import RedisStore

# How long past REDIS_TIMEOUT_S a call may take to fail when Redis stops answering (the check
# runs every 0.1 s; the machine is shared).
TIMEOUT_SLACK_S = 2.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop, pause or restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def pipe(redis_server: RedisServer) -> AsyncIterator[RedisPipe]:
    opened = RedisPipe(redis_server.url, max_in_flight=64)
    yield opened
    await opened.close()


def test_pack_writes_redis_protocol() -> None:
    assert pack(["SET", "k", b"v\r\n", 12, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )


async def test_every_caller_gets_its_own_reply_among_a_thousand(pipe: RedisPipe) -> None:
    prefix = f"pipe-test:{uuid.uuid4().hex}:"
    await asyncio.gather(*(pipe.execute("SET", f"{prefix}{i}", f"value-{i}") for i in range(1000)))
    replies = await asyncio.gather(*(pipe.execute("GET", f"{prefix}{i}") for i in range(1000)))
    assert replies == [f"value-{i}".encode() for i in range(1000)]


async def test_an_error_reply_fails_its_call_only(pipe: RedisPipe) -> None:
    key = f"pipe-test:{uuid.uuid4().hex}"
    replies = await asyncio.gather(
        pipe.execute("SET", key, "a string"),
        pipe.execute("LPUSH", key, "x"),  # WRONGTYPE
        pipe.execute("GET", key),
        return_exceptions=True,
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == b"a string"


async def _pause_redis(url: str, seconds: float) -> None:
    """Makes Redis hold every other client's commands for `seconds` (CLIENT PAUSE)."""
    admin = aioredis.Redis.from_url(url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
    finally:
        await admin.aclose()


async def test_a_caller_cancelled_while_waiting_leaves_the_others_their_replies(
    pipe: RedisPipe, redis_server: RedisServer
) -> None:
    key, counter = f"pipe-test:{uuid.uuid4().hex}", f"pipe-test:{uuid.uuid4().hex}"
    await pipe.execute("SET", key, "mine")
    await _pause_redis(redis_server.url, 0.3)
    cancelled = asyncio.create_task(pipe.execute("INCR", counter))
    behind = asyncio.create_task(pipe.execute("GET", key))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await behind == b"mine"  # not the INCR's 1
    assert await pipe.execute("GET", key) == b"mine"
    assert await pipe.execute("GET", counter) == b"1"  # written before the cancel: it ran


async def test_a_caller_cancelled_before_its_turn_never_sends(redis_server: RedisServer) -> None:
    key = f"pipe-test:{uuid.uuid4().hex}"
    one_at_a_time = RedisPipe(redis_server.url, max_in_flight=1)
    try:
        await one_at_a_time.execute("PING")
        await _pause_redis(redis_server.url, 0.3)
        holding = asyncio.create_task(one_at_a_time.execute("PING"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(one_at_a_time.execute("INCR", key))
        await asyncio.sleep(0.05)
        waiting.cancel()
        assert await holding == b"PONG"
        assert await one_at_a_time.execute("GET", key) is None  # the INCR never ran
    finally:
        await one_at_a_time.close()


async def test_a_caller_cancelled_once_queued_but_before_the_write_never_sends(
    pipe: RedisPipe,
) -> None:
    key = f"pipe-test:{uuid.uuid4().hex}"
    await pipe.execute("PING")
    queued = asyncio.create_task(pipe.execute("INCR", key))
    await asyncio.sleep(0)  # the call has queued its command; the writer runs after this step
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await pipe.execute("GET", key) is None  # the INCR was never written


async def test_a_redis_that_stops_answering_fails_the_waiting_calls_then_serves_again(
    own_redis: RedisServer,
) -> None:
    assert own_redis.process is not None
    store = RedisStore(own_redis.url)
    try:
        await store.ping()
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # alive, connected, silent
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.claim(uuid.uuid4().hex, ["fp"], "holder", 5.0) for _ in range(50)),
            return_exceptions=True,
        )
        waited = time.monotonic() - started
        assert all(isinstance(result, StoreUnavailableError) for result in results), results
        assert REDIS_TIMEOUT_S <= waited < REDIS_TIMEOUT_S + TIMEOUT_SLACK_S
        os.kill(own_redis.process.pid, signal.SIGCONT)
        claim = await store.claim(uuid.uuid4().hex, ["fp"], "holder", 5.0)
        assert claim.state is ClaimState.NEW
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await store.close()


async def test_a_restarted_redis_is_used_again_and_given_its_scripts_again(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(own_redis.url)
    windows = [Window("phone", "13800138000", parse_limit("100/1s"))]
    try:
        assert await store.acquire(windows, "first") is None
        own_redis.stop()  # gone, and with it every script Redis knew
        with pytest.raises(StoreUnavailableError):
            await store.acquire(windows, "while-down")
        own_redis.start()
        assert await store.acquire(windows, "after") is None
        admin = aioredis.Redis(port=own_redis.port)
        try:
            assert await admin.zcard("yunpian-sms:rate:phone:13800138000:100/1") == 1
        finally:
            await admin.aclose()
    finally:
        await store.close()


async def test_close_fails_the_calls_still_waiting(redis_server: RedisServer) -> None:
    pipe = RedisPipe(redis_server.url, max_in_flight=1)
    await pipe.execute("PING")
    await _pause_redis(redis_server.url, 0.3)
    holding = asyncio.create_task(pipe.execute("PING"))
    queued = [asyncio.create_task(pipe.execute("PING")) for _ in range(5)]
    await asyncio.sleep(0.05)
    await pipe.close()
    results = await asyncio.gather(holding, *queued, return_exceptions=True)
    assert all(isinstance(result, Exception) for result in results), results


async def test_a_redis_that_takes_the_connection_but_never_answers_fails_the_call_in_time(
    own_redis: RedisServer,
) -> None:
    # Stopped, its listening socket still completes TCP handshakes: the connection is made and
    # its HELLO waits for ever unless the pipe gives up.
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    pipe = RedisPipe(own_redis.url, max_in_flight=4)
    try:
        started = time.monotonic()
        async with asyncio.timeout(10 * (REDIS_TIMEOUT_S + TIMEOUT_SLACK_S)):  # else: it hangs
            results = await asyncio.gather(
                *(pipe.execute("PING") for _ in range(10)), return_exceptions=True
            )
        waited = time.monotonic() - started
        assert all(isinstance(result, Exception) for result in results), results
        # Each batch waits for its own connection attempt: at most ten of them, one per call.
        assert waited < 10 * (REDIS_TIMEOUT_S + TIMEOUT_SLACK_S)
        os.kill(own_redis.process.pid, signal.SIGCONT)
        assert await pipe.execute("PING") == b"PONG"
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await pipe.close()


async def test_close_while_connecting_fails_the_calls_waiting_for_the_connection(
    own_redis: RedisServer,
) -> None:
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # the connection's handshake waits
    pipe = RedisPipe(own_redis.url, max_in_flight=4)
    try:
        waiting = asyncio.create_task(pipe.execute("PING"))
        await asyncio.sleep(0.1)
        await pipe.close()
        async with asyncio.timeout(TIMEOUT_SLACK_S):  # else: it waits for ever
            with pytest.raises(RedisConnectionError):
                await waiting
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)


async def test_a_redis_that_stops_reading_mid_write_does_not_hold_later_calls_for_ever(
    own_redis: RedisServer,
) -> None:
    # A command larger than the sockets' buffers: the writer waits in drain() for a Redis that
    # reads nothing. Breaking the link must free the writer, else every later call waits (its
    # command is never written, so no reply's wait is ever watched) until Redis reads again.
    assert own_redis.process is not None
    pipe = RedisPipe(own_redis.url, max_in_flight=4)
    try:
        assert await pipe.execute("PING") == b"PONG"
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        key = f"pipe-test:{uuid.uuid4().hex}"
        big = asyncio.create_task(pipe.execute("SET", key, b"x" * (32 << 20)))
        done, _ = await asyncio.wait({big}, timeout=REDIS_TIMEOUT_S + TIMEOUT_SLACK_S)
        assert big in done
        assert isinstance(big.exception(), Exception)
        later = asyncio.create_task(pipe.execute("PING"))
        done, _ = await asyncio.wait({later}, timeout=REDIS_TIMEOUT_S + TIMEOUT_SLACK_S)
        assert later in done, "the call waits for as long as Redis stays stopped"
        assert isinstance(later.exception(), Exception)
        os.kill(own_redis.process.pid, signal.SIGCONT)
        async with asyncio.timeout(REDIS_TIMEOUT_S + TIMEOUT_SLACK_S):
            assert await pipe.execute("PING") == b"PONG"
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        async with asyncio.timeout(10):
            await pipe.close()


async def test_a_caller_cancelled_while_the_connection_is_made_never_sends(
    own_redis: RedisServer,
) -> None:
    # The module promises: a call cancelled before its command was written never sends it.
    assert own_redis.process is not None
    pid = own_redis.process.pid
    key = f"pipe-test:{uuid.uuid4().hex}"
    pipe = RedisPipe(own_redis.url, max_in_flight=4)
    try:
        os.kill(pid, signal.SIGSTOP)  # the connection's handshake waits...
        asyncio.get_running_loop().call_later(0.3, os.kill, pid, signal.SIGCONT)  # ...a while
        cancelled = asyncio.create_task(pipe.execute("INCR", key))
        await asyncio.sleep(0.1)
        cancelled.cancel()  # its command is not written yet: the connection is being made
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        async with asyncio.timeout(REDIS_TIMEOUT_S + TIMEOUT_SLACK_S):
            assert await pipe.execute("GET", key) is None  # the INCR never ran
    finally:
        os.kill(pid, signal.SIGCONT)
        await pipe.close()


def _pipe_tasks() -> set[asyncio.Task[object]]:
    names = ("_read_forever", "_write_forever", "_break")
    running = (task for task in asyncio.all_tasks() if not task.done())
    return {task for task in running if getattr(task.get_coro(), "__name__", "") in names}


async def test_close_leaves_no_task_running(redis_server: RedisServer) -> None:
    before = _pipe_tasks()
    pipe = RedisPipe(redis_server.url, max_in_flight=4)
    assert await pipe.execute("PING") == b"PONG"
    await pipe.close()
    assert _pipe_tasks() - before == set()


async def test_health_checks_of_the_url_do_not_put_replies_out_of_step(
    redis_server: RedisServer,
) -> None:
    # redis-py's health checks (a PING before a command) must never run on the shared link.
    pipe = RedisPipe(redis_server.url + "?health_check_interval=1", max_in_flight=64)
    prefix = f"pipe-test:{uuid.uuid4().hex}:"
    try:
        for round_ in range(3):
            replies = await asyncio.gather(
                *(pipe.execute("SET", f"{prefix}{i}", f"{round_}-{i}", "GET") for i in range(50))
            )
            expected = [None if round_ == 0 else f"{round_ - 1}-{i}".encode() for i in range(50)]
            assert replies == expected
            await asyncio.sleep(1.2)
    finally:
        await pipe.close()


async def test_an_unexpected_error_in_the_writer_fails_its_batch_not_every_later_call(
    pipe: RedisPipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await pipe.execute("PING") == b"PONG"
    write = RedisPipe._write
    failed = False

    async def write_once_failing(self: RedisPipe, batch: list[tuple[bytes, object]]) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("a bug")
        await write(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisPipe, "_write", write_once_failing)
    async with asyncio.timeout(TIMEOUT_SLACK_S):  # else: this call, and every later one, hang
        with pytest.raises(RuntimeError):
            await pipe.execute("PING")
        assert await pipe.execute("PING") == b"PONG"

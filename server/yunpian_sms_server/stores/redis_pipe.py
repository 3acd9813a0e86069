"""One connection to Redis that every store operation of the process shares, pipelined.

redis-py runs a command on a connection it takes from its pool and gives back after the reply:
at every call, a pool checkout, a task for the write's timeout and a read of its own. Here the
commands of concurrent calls are written together by one writer task, in the order their
futures join the link's queue of replies, and one reader task hands each reply to the next
future in that queue: Redis answers the commands of one connection in the order it got them.
redis-py still makes the connection (the URL's host, TLS, password, database) and parses the
replies (hiredis).

A call that waits longer than the timeout for its reply, or a broken connection, fails every
call waiting on that connection; the next command opens a new one. A call cancelled before its
command was written never sends it; once written, the command runs whatever becomes of the call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

# A reply not come after this long fails its call and every call waiting on the same connection.
REDIS_TIMEOUT_S: Final = 1.0
# How often the replies' wait is checked against REDIS_TIMEOUT_S.
WATCH_INTERVAL_S: Final = 0.1

Arg = str | int | float | bytes


def pack(args: Sequence[Arg]) -> bytes:
    """A command in Redis's protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Link:
    """One open connection and the futures waiting for its replies, oldest first."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.broken = False


class RedisPipe:
    """Redis commands of any number of concurrent calls, pipelined on one connection.

    `max_in_flight` commands at most are written and not yet answered; more wait their turn.
    """

    def __init__(self, url: str, max_in_flight: int) -> None:
        # redis-py makes the connection as the URL says; replies are waited for here, so its
        # own read timeout is off.
        self._pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._turns = asyncio.Semaphore(max_in_flight)
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._queued = asyncio.Event()
        self._link: _Link | None = None
        self._writer: asyncio.Task[None] | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._breaking: set[asyncio.Task[None]] = set()
        self._readers: set[asyncio.Task[None]] = set()  # of every link, until they end
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        """Redis's reply to one command; a failure is a RedisError, OSError or TimeoutError."""
        packed = pack(args)
        async with self._turns:
            if self._closed:
                raise RedisConnectionError("the store is closed")
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((packed, future))
            self._queued.set()
            if self._writer is None or self._writer.done():  # none yet, or ended by a bug
                self._writer = asyncio.create_task(self._write_forever())
            return await future

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait({self._writer})
        closed = RedisConnectionError("the store is closed")
        self._fail_queue(closed)
        if self._link is not None:
            await self._break(self._link, closed)
        # The readers (a broken link's too: cancelled, or still in its own _break) and the
        # watchdog's breaks end before close() returns.
        tasks = self._readers | self._breaking
        for task in self._readers:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._pool.aclose()

    # --- Writing ---------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch = [(packed, future) for packed, future in self._queue if not future.done()]
            self._queue = []
            if batch:
                try:
                    await self._write(batch)
                except Exception as error:  # a bug: fail the batch, not every later call
                    for _, future in batch:
                        _fail(future, error)

    async def _write(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        try:
            link = await self._open_link()
        except BaseException as error:  # whatever stops the connection fails the batch
            for _, future in batch:
                _fail(
                    future,
                    RedisConnectionError("the store is closed") if _closing(error) else error,
                )
            if _closing(error):
                raise
            return
        # A call cancelled while the connection was being made never sends its command.
        batch = [(packed, future) for packed, future in batch if not future.done()]
        if not batch:
            return
        now = asyncio.get_running_loop().time()
        link.waiting.extend((future, now) for _, future in batch)
        try:
            await link.connection.send_packed_command(
                [packed for packed, _ in batch], check_health=False
            )
        except Exception as error:  # a failed write leaves the link unusable
            await self._break(link, error)

    async def _open_link(self) -> _Link:
        if self._link is not None and not self._link.broken:
            return self._link
        connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            # The connect and its handshake (HELLO, AUTH, SELECT): a Redis that accepts the
            # connection but does not answer must not hold the writer, and every call, for ever.
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await connection.connect()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        link = _Link(connection)
        link.reader = asyncio.create_task(self._read_forever(link))
        self._readers.add(link.reader)
        link.reader.add_done_callback(self._readers.discard)
        self._link = link
        self._watch_soon()
        return link

    # --- Reading ---------------------------------------------------------------------------

    async def _read_forever(self, link: _Link) -> None:
        while True:
            try:
                reply: Any = await link.connection.read_response(
                    timeout=math.inf, disconnect_on_error=False
                )
            except ResponseError as error:
                reply = error
            except asyncio.CancelledError:
                return
            except (RedisError, OSError, TimeoutError) as error:
                await self._break(link, error)
                return
            if not link.waiting:
                # A reply no command asked for: the connection is out of step; drop it.
                await self._break(link, RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = link.waiting.popleft()
            if not future.done():
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    # --- Failing ---------------------------------------------------------------------------

    def _watch_soon(self) -> None:
        if self._watch is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watch = loop.call_later(WATCH_INTERVAL_S, self._check_waits)

    def _check_waits(self) -> None:
        """Breaks the link whose oldest command has waited past the timeout."""
        self._watch = None
        link = self._link
        if link is None or link.broken:
            return
        if link.waiting:
            oldest = link.waiting[0][1]
            if asyncio.get_running_loop().time() - oldest > REDIS_TIMEOUT_S:
                error = TimeoutError("no reply from Redis in time")
                breaking = asyncio.get_running_loop().create_task(self._break(link, error))
                self._breaking.add(breaking)  # the loop keeps only a weak reference
                breaking.add_done_callback(self._breaking.discard)
                return
        self._watch_soon()

    async def _break(self, link: _Link, error: BaseException) -> None:
        """Fails every call waiting on `link` and closes its connection."""
        if link.broken:
            return
        link.broken = True
        while link.waiting:
            future, _ = link.waiting.popleft()
            _fail(future, error)
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
        # Closed, a socket whose peer reads nothing keeps its unsent bytes, and the writer waits
        # in drain() with them (every later call with it) until the peer reads again: abort it.
        stream = getattr(link.connection, "_writer", None)  # redis-py's asyncio.StreamWriter
        if stream is not None:
            stream.transport.abort()
        with contextlib.suppress(RedisError, OSError):
            await link.connection.disconnect(nowait=True)

    def _fail_queue(self, error: BaseException) -> None:
        for _, future in self._queue:
            _fail(future, error)
        self._queue = []


def _closing(error: BaseException) -> bool:
    """The writer is being stopped (close), not the connection failing."""
    return isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

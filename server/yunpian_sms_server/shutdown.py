"""The server's shutdown as its RPCs see it: first draining, then interrupting what still runs.

While draining, new SmsService calls are refused with SHUTTING_DOWN (nothing was done: retry
elsewhere). When the grace period is over, the calls still running are interrupted: each is
cancelled once, by `interrupt()`, and the code that catches the cancellation asks
`absorb_interrupt()` whether it may answer instead (with the status that says what happened)
rather than let gRPC cut the call with a bare UNAVAILABLE.
"""

from __future__ import annotations

import asyncio


class Shutdown:
    """Draining and interrupting flags, and the RPC tasks an interrupt would reach."""

    def __init__(self) -> None:
        self.draining = False
        self.interrupting = False
        self._calls: set[asyncio.Task[object]] = set()
        self._interrupted: set[asyncio.Task[object]] = set()

    def enter(self, task: asyncio.Task[object]) -> None:
        """Registers an RPC's task: an interrupt reaches it until it leaves."""
        self._calls.add(task)

    def leave(self, task: asyncio.Task[object]) -> None:
        self._calls.discard(task)
        self._interrupted.discard(task)

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

    def interrupt(self) -> int:
        """Cancels every registered RPC once; returns how many."""
        self.interrupting = True
        for task in self._calls - self._interrupted:
            self._interrupted.add(task)
            task.cancel()
        return len(self._interrupted)

    def absorb_interrupt(self) -> bool:
        """Whether the current task's cancellation came from `interrupt()` alone.

        If so it is undone, so the RPC can answer; a cancellation by the client or by gRPC (the
        task was cancelled more than once) is left to propagate.
        """
        task = asyncio.current_task()
        if task is None or task not in self._interrupted or task.cancelling() != 1:
            return False
        self._interrupted.discard(task)
        task.uncancel()
        return True

"""The event loop's lag: how late a timer fires, which is how long every RPC waited meanwhile.

One background task sleeps a fixed interval and reports how much later than asked it woke. A
request that holds the loop (CPU-bound work, a blocking call) shows up as one lag as long as the
hold, less the part of the interval that had already passed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

# How often the loop is sampled. Ten wake-ups a second cost an idle server ~0.2 % of a core
# (measured; twenty cost twice that), and a busy one less: its loop is awake anyway.
LOOP_LAG_INTERVAL_S: Final = 0.1


async def watch_loop_lag(
    observe: Callable[[float], None], interval_s: float = LOOP_LAG_INTERVAL_S
) -> None:
    """Reports the loop's lag in seconds to `observe` after every interval, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - due))


class LoopLagMonitor:
    """Runs watch_loop_lag in a task of its own between start() and stop()."""

    def __init__(
        self, observe: Callable[[float], None], interval_s: float = LOOP_LAG_INTERVAL_S
    ) -> None:
        self._observe = observe
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts sampling on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(
                watch_loop_lag(self._observe, self._interval_s), name="loop-lag-monitor"
            )

    async def stop(self) -> None:
        """Stops sampling: cancels the task and waits for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

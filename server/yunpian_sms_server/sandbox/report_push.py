"""Pushing delivery reports to the callback URLs of their messages, as YunPian does.

A push is `POST <callback_url>` with `Content-Type: application/x-www-form-urlencoded;
charset=utf-8` and one field, `sms_status`: the JSON array of up to 100 reports (the fields of
pull_status), form-encoded (so a form parser, or one URL-decoding of the value, gives the JSON
back). The receiver succeeds by answering a 2xx status with the text `SUCCESS` or `0`
(surrounding white space aside); any other answer, a redirect, a connection error or no answer
within `push_timeout_seconds` is a failure, retried after `retry_interval_seconds` up to
PUSH_RETRIES times. A push the receiver took but failed to acknowledge comes again: duplicates
happen, as they do at YunPian.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from yunpian_sms_server.sandbox.account import Account
from yunpian_sms_server.sandbox.delivery_reports import PUSH_RETRIES, PushBatch

# The headers of every push, as YunPian documents them.
PUSH_HEADERS: Final = {
    "Accept": "application/json;charset=utf-8",
    "Content-Type": "application/x-www-form-urlencoded;charset=utf-8",
}
# The answers that acknowledge a push.
ACKNOWLEDGEMENTS: Final = frozenset({"SUCCESS", "0"})
# Of an answer, only this much is read: an acknowledgement is a word.
MAX_ANSWER_BYTES: Final = 1024
# Pushes in flight at once (to any URLs); beyond this they queue for a connection.
PUSH_CONNECTION_LIMIT: Final = 100
# How often the push task looks at the clock while a push waits for its time: the account's
# clock may be a test's, moved by hand, so the task cannot sleep until the time comes.
POLL_INTERVAL_S: Final = 0.05

_log = logging.getLogger(__name__)


def push_body(batch: PushBatch) -> bytes:
    """The form body of a push: `sms_status=<the reports' JSON array, form-encoded>`."""
    reports = json.dumps([report.to_wire() for report in batch.reports], ensure_ascii=False)
    return urlencode({"sms_status": reports}).encode("ascii")


class ReportPusher:
    """The background task of a serving sandbox that pushes its account's due reports.

    `start()` in a running event loop; `close()` stops it and every push in flight.
    """

    def __init__(self, account: Account) -> None:
        self._account = account
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._pushes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Starts pushing."""
        self._session = aiohttp.ClientSession(
            headers=PUSH_HEADERS,
            connector=aiohttp.TCPConnector(limit=PUSH_CONNECTION_LIMIT),
        )
        self._account.reports.on_change = self._wake.set
        self._task = asyncio.create_task(self._run(), name="sandbox-report-push")

    async def close(self) -> None:
        """Stops the task and the pushes in flight (their reports wait), closes the session."""
        self._account.reports.on_change = None
        tasks = [task for task in (self._task, *self._pushes) if task is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):  # a bug: say so rather than lose it
                _log.error("The report push task failed", exc_info=outcome)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        reports = self._account.reports
        clock = self._account.clock
        while True:
            self._wake.clear()
            for batch in reports.due_pushes(clock()):
                task = asyncio.create_task(self._push(batch))
                self._pushes.add(task)
                task.add_done_callback(self._pushes.discard)
            next_at = reports.next_push_at()
            timeout = None if next_at is None else min(max(next_at - clock(), 0), POLL_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _push(self, batch: PushBatch) -> None:
        reports = self._account.reports
        try:
            failure = await self._post(batch)
        except asyncio.CancelledError:
            reports.push_abandoned(batch)
            raise
        where = _without_query(batch.url)
        if failure is None:
            _log.info("Pushed %d delivery reports to %s", len(batch.reports), where)
        elif batch.attempts > PUSH_RETRIES:
            _log.warning(
                "Gave up pushing %d delivery reports to %s after %d attempts: %s",
                len(batch.reports),
                where,
                batch.attempts,
                failure,
            )
        else:
            _log.info(
                "Pushing %d delivery reports to %s failed (attempt %d): %s",
                len(batch.reports),
                where,
                batch.attempts,
                failure,
            )
        reports.push_done(batch, failure is None, self._account.clock())

    async def _post(self, batch: PushBatch) -> str | None:
        """POSTs a batch; None when the receiver acknowledged it, else what went wrong."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self._account.report_settings.push_timeout_seconds)
        try:
            async with self._session.post(
                batch.url, data=push_body(batch), timeout=timeout, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_ANSWER_BYTES)
        except TimeoutError:
            return "no answer in time"
        except (aiohttp.ClientError, ValueError) as error:
            return f"{type(error).__name__}: {error}"
        text = answer.decode("utf-8", errors="replace").strip()
        if not 200 <= response.status < 300:
            return f"HTTP {response.status}"
        if text not in ACKNOWLEDGEMENTS:
            return f"answered {text[:50]!r}, not SUCCESS or 0"
        return None


def _without_query(url: str) -> str:
    """A callback URL for the logs: no user info, query or fragment, where a secret could be."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))

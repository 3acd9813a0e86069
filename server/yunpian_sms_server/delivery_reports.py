"""Delivery reports: what became of each SMS, collected by pull or push, told to its sender.

Every accepted send keeps its message (id, caller, send time) in the store for the time YunPian
keeps reports. Reports arrive by push (report_endpoint.py) or by pull: one replica at a time,
holding a lease in the store, asks YunPian for a page of reports, saves it, and asks for the
next until none is left, then waits. A pulled report is gone from YunPian, so each page is saved
before the next is asked for (retried until the store takes it), and a puller that is stopped
finishes the page in hand first. Reports of messages this service does not know are counted
and dropped; a message's first report wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog

from yunpian_sms_server.config import DeliveryConfig
from yunpian_sms_server.delivery_state import (
    DeliveryReport,
    DeliveryState,
    ReportFormatError,
    SentMessage,
    parse_reports,
)
from yunpian_sms_server.errors import Reason, ServiceError, invalid_argument
from yunpian_sms_server.ids import new_id
from yunpian_sms_server.stores import (
    SavedReports,
    Store,
    StoreUnavailableError,
    store_required,
)
from yunpian_sms_server.yunpian import YunpianClient

PULL_LEASE: Final = "delivery-pull"
# After a failure the puller waits the pull interval, doubled each time up to this.
MAX_BACKOFF_S: Final = 60.0
# A message id is YunPian's sid: a decimal 64-bit number.
MAX_MESSAGE_ID_DIGITS: Final = 20

_log = structlog.get_logger("yunpian_sms.delivery")


def check_message_id(message_id: str) -> None:
    """Raises INVALID_MESSAGE_ID unless it can be a YunPian sid."""
    if not (message_id.isascii() and message_id.isdigit()) or len(message_id) > (
        MAX_MESSAGE_ID_DIGITS
    ):
        raise invalid_argument(
            Reason.INVALID_MESSAGE_ID,
            "message_id",
            "The message_id must be the decimal message id SendCode or StartVerification returned.",
        )


class DeliveryReports:
    """Keeps and tells delivery reports, in a store."""

    def __init__(
        self,
        store: Store,
        config: DeliveryConfig,
        on_saved: Callable[[SavedReports], None] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        # Called with every batch saved (the metrics count them).
        self._on_saved = on_saved

    async def status(self, caller: str, message_id: str) -> SentMessage:
        """The caller's message as it stands (UNKNOWN past the report wait); NOT_FOUND for
        an unknown id or another caller's message."""
        with store_required("the message's status could not be read"):
            message = await self._store.get_message(message_id)
        if message is None or message.caller != caller:
            raise ServiceError(
                Reason.MESSAGE_NOT_FOUND,
                "No message with this id was sent by this caller (or its report is no longer "
                "kept).",
            )
        return message.as_seen_at(time.time(), self._config.report_wait_seconds)

    async def delivery_of(self, caller: str, message_id: str) -> DeliveryState | None:
        """The delivery state of the caller's message, None when there is none to tell."""
        if not message_id:
            return None
        with contextlib.suppress(ServiceError):
            return (await self.status(caller, message_id)).state
        return None

    async def save(self, reports: Sequence[DeliveryReport]) -> SavedReports:
        """Saves reports (StoreUnavailableError when the store cannot take them)."""
        saved = await self._store.save_reports(reports, self._config.report_wait_seconds)
        if saved.unknown:
            _log.info("reports_for_unknown_messages", count=saved.unknown)
        if self._on_saved is not None:
            self._on_saved(saved)
        return saved


class ReportPuller:
    """Pulls YunPian's reports while this replica holds the pull lease, until stopped."""

    def __init__(
        self,
        store: Store,
        yunpian: YunpianClient,
        reports: DeliveryReports,
        config: DeliveryConfig,
        on_pull: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._yunpian = yunpian
        self._reports = reports
        self._config = config
        # Called with each pull's result: reports, empty, error, bad_response, store_error.
        self._on_pull = on_pull or (lambda _result: None)
        self._holder = new_id()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-report-puller")

    async def stop(self) -> None:
        """Stops after the page in hand is saved; lets another replica take the pull at once."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(StoreUnavailableError):
            await self._store.give_up_lease(PULL_LEASE, self._holder)

    async def _run(self) -> None:
        config = self._config
        backoff = config.pull_interval_seconds
        while not self._stopping.is_set():
            try:
                holding = await self._store.take_lease(
                    PULL_LEASE, self._holder, config.pull_lease_seconds
                )
            except StoreUnavailableError:
                self._on_pull("store_error")
                backoff = await self._back_off(backoff)
                continue
            if not holding:
                await self._wait(config.pull_interval_seconds)
                continue
            result = await self._pull_once()
            self._on_pull(result)
            if result == "reports":
                backoff = config.pull_interval_seconds
                continue  # the next page at once, until YunPian has none
            if result == "empty":
                backoff = config.pull_interval_seconds
                await self._wait(config.pull_interval_seconds)
            else:
                backoff = await self._back_off(backoff)

    async def _pull_once(self) -> str:
        """One page: taken from YunPian, saved; what it came to."""
        try:
            items = await self._yunpian.pull_status(self._config.page_size)
        except ServiceError as error:
            _log.warning("report_pull_failed", reason=error.reason.value, message=error.message)
            return "error"
        try:
            reports = parse_reports(items)
        except ReportFormatError as error:
            # YunPian handed these out and will not again: nothing can be saved of them.
            _log.error("report_pull_unreadable", problem=str(error), count=len(items))
            return "bad_response"
        if not reports:
            return "empty"
        await self._save_until_saved(reports)
        return "reports"

    async def _save_until_saved(self, reports: Sequence[DeliveryReport]) -> None:
        """Saves a page, retrying while the store fails: the reports exist nowhere else now."""
        backoff = self._config.pull_interval_seconds
        while True:
            try:
                await self._reports.save(reports)
                return
            except StoreUnavailableError as error:
                self._on_pull("store_error")
                _log.warning("report_save_failed", error=str(error), count=len(reports))
                await asyncio.sleep(min(backoff, MAX_BACKOFF_S))
                backoff *= 2

    async def _wait(self, seconds: float) -> None:
        """Sleeps, or less when the puller is stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _back_off(self, backoff: float) -> float:
        await self._wait(min(backoff, MAX_BACKOFF_S))
        return min(backoff * 2, MAX_BACKOFF_S)

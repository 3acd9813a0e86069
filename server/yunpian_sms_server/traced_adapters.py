"""The adapters' work as OpenTelemetry spans: each store operation and each HTTP call to YunPian,
as children of the span of the RPC they serve.

Used only when tracing is enabled (`telemetry` wraps the adapters in these); with it off, the
server never imports this module. A span is made only inside a recorded one (an RPC's): the
background work of the delivery-report puller and the template checks starts no trace of its
own.

No attribute carries what the work is about: never a store key (they hold phone numbers), a
phone number, a code, the API key or the SMS text. Exceptions are recorded by type only
(`error.type`): their messages may quote any of those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from yunpian_sms_server.delivery_state import DeliveryReport, SentMessage
from yunpian_sms_server.limits import Window
from yunpian_sms_server.stores import (
    CheckUse,
    Claim,
    ClaimCounted,
    CodeAdded,
    Refusal,
    SavedReports,
    Store,
)
from yunpian_sms_server.verification_state import VerificationState, VerificationStatus
from yunpian_sms_server.yunpian import YunpianClient, answer_code

REDIS_DEFAULT_PORT: Final = 6379
# The answer code YunPian wrote (0: accepted), on the span of each call to it.
YUNPIAN_CODE_ATTRIBUTE: Final = "yunpian.code"


def store_attributes(url: str) -> dict[str, AttributeValue]:
    """The attributes of every span of the store at `url`: its system and, for Redis, where it
    is (never the URL's password)."""
    if url.startswith("memory:"):
        return {"db.system": "memory"}
    parts = urlsplit(url)
    return {
        "db.system": "redis",
        "server.address": parts.hostname or "",
        "server.port": parts.port or REDIS_DEFAULT_PORT,
        "db.namespace": parts.path.strip("/") or "0",
    }


def _recording() -> bool:
    """Whether the current span (the RPC's) is recorded: only then are children worth making."""
    return trace.get_current_span().is_recording()


@contextlib.contextmanager
def _failures(span: Span) -> Iterator[None]:
    """Marks the span failed, by the exception's type only, when the block raises."""
    try:
        yield
    except BaseException as error:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(StatusCode.ERROR)
        raise


class TracedStore:
    """A store whose every operation is a span named after it (db.system: redis or memory)."""

    def __init__(self, store: Store, tracer: Tracer, url: str) -> None:
        self._store = store
        self._tracer = tracer
        self._attributes = store_attributes(url)
        # Redis is another process; the memory store is in ours.
        self._kind = SpanKind.INTERNAL if url.startswith("memory:") else SpanKind.CLIENT

    @contextlib.contextmanager
    def _span(self, operation: str) -> Iterator[None]:
        if not _recording():
            yield
            return
        with (
            self._tracer.start_as_current_span(
                operation,
                kind=self._kind,
                attributes={**self._attributes, "db.operation.name": operation},
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            _failures(span),
        ):
            yield

    async def acquire(self, windows: Sequence[Window], token: str) -> Refusal | None:
        with self._span("acquire"):
            return await self._store.acquire(windows, token)

    async def release(self, windows: Sequence[Window], token: str) -> None:
        with self._span("release"):
            await self._store.release(windows, token)

    async def claim(
        self, key: str, fingerprints: Sequence[str], holder: str, lease_s: float
    ) -> Claim:
        with self._span("claim"):
            return await self._store.claim(key, fingerprints, holder, lease_s)

    async def claim_and_acquire(
        self,
        key: str,
        fingerprints: Sequence[str],
        holder: str,
        lease_s: float,
        windows: Sequence[Window],
    ) -> ClaimCounted:
        with self._span("claim_and_acquire"):
            return await self._store.claim_and_acquire(key, fingerprints, holder, lease_s, windows)

    async def complete(
        self,
        key: str,
        fingerprint: str,
        record: bytes,
        ttl_s: float,
        message: SentMessage | None = None,
        message_keep_s: float = 0.0,
    ) -> SentMessage | None:
        with self._span("complete"):
            return await self._store.complete(
                key, fingerprint, record, ttl_s, message, message_keep_s
            )

    async def record_message(self, message: SentMessage, keep_s: float) -> SentMessage | None:
        with self._span("record_message"):
            return await self._store.record_message(message, keep_s)

    async def save_reports(self, reports: Sequence[DeliveryReport], keep_s: float) -> SavedReports:
        with self._span("save_reports"):
            return await self._store.save_reports(reports, keep_s)

    async def get_message(self, message_id: str) -> SentMessage | None:
        with self._span("get_message"):
            return await self._store.get_message(message_id)

    async def take_lease(self, name: str, holder: str, lease_s: float) -> bool:
        with self._span("take_lease"):
            return await self._store.take_lease(name, holder, lease_s)

    async def give_up_lease(self, name: str, holder: str) -> None:
        with self._span("give_up_lease"):
            await self._store.give_up_lease(name, holder)

    async def release_claim(self, key: str, holder: str) -> None:
        with self._span("release_claim"):
            await self._store.release_claim(key, holder)

    async def open_verification(
        self, pending_key: str, fresh: VerificationState, ttl_s: float, keep_s: float
    ) -> VerificationState:
        with self._span("open_verification"):
            return await self._store.open_verification(pending_key, fresh, ttl_s, keep_s)

    async def add_verification_code(
        self, verification_id: str, code_hash: str, max_sends: int, keep_s: float
    ) -> tuple[CodeAdded, VerificationState | None]:
        with self._span("add_verification_code"):
            return await self._store.add_verification_code(
                verification_id, code_hash, max_sends, keep_s
            )

    async def withdraw_verification_code(self, verification_id: str, code_hash: str) -> None:
        with self._span("withdraw_verification_code"):
            await self._store.withdraw_verification_code(verification_id, code_hash)

    async def note_verification_message(self, verification_id: str, message_id: str) -> None:
        with self._span("note_verification_message"):
            await self._store.note_verification_message(verification_id, message_id)

    async def find_pending_verification(self, pending_key: str) -> str | None:
        with self._span("find_pending_verification"):
            return await self._store.find_pending_verification(pending_key)

    async def use_verification_check(
        self, verification_id: str, caller: str, code_hashes: Sequence[str], keep_s: float
    ) -> tuple[CheckUse, VerificationState | None]:
        with self._span("use_verification_check"):
            return await self._store.use_verification_check(
                verification_id, caller, code_hashes, keep_s
            )

    async def end_verification(
        self, verification_id: str, status: VerificationStatus, keep_s: float
    ) -> tuple[VerificationState | None, bool]:
        with self._span("end_verification"):
            return await self._store.end_verification(verification_id, status, keep_s)

    async def get_verification(
        self, verification_id: str, keep_s: float
    ) -> VerificationState | None:
        with self._span("get_verification"):
            return await self._store.get_verification(verification_id, keep_s)

    async def ping(self) -> None:
        await self._store.ping()

    async def close(self) -> None:
        await self._store.close()


class TracedYunpianClient(YunpianClient):
    """A YunPian client whose every HTTP call is a CLIENT span with OpenTelemetry's HTTP
    attributes (method, URL without credentials, server, response status) and YunPian's answer
    code; a connection retried is a span per attempt (`http.request.resend_count`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tracer: Tracer,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__(
            session,
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            on_latency=on_latency,
        )
        self._tracer = tracer
        parts = urlsplit(base_url)
        self._server: Mapping[str, AttributeValue] = {
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
        # The base URL without credentials: what url.full starts with.
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self._origin = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"

    async def _exchange(
        self, path: str, url: str, body: bytes, budget_s: float, tries: int
    ) -> tuple[int, bytes]:
        if not _recording():
            return await super()._exchange(path, url, body, budget_s, tries)
        attributes: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "url.full": self._origin + path,
            "url.path": path,
            **self._server,
        }
        if tries > 1:
            attributes["http.request.resend_count"] = tries - 1
        with (
            self._tracer.start_as_current_span(
                f"POST {path}",
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            _failures(span),
        ):
            status, answer = await super()._exchange(path, url, body, budget_s, tries)
            span.set_attribute("http.response.status_code", status)
            code = answer_code(answer)
            if code is not None:
                span.set_attribute(YUNPIAN_CODE_ATTRIBUTE, code)
            if status >= 400:
                span.set_attribute("error.type", str(status))
            if status >= 400 or code:
                span.set_status(StatusCode.ERROR)
            return status, answer

"""The YunPian HTTP client: one `single_send.json` call per SendCode, answers mapped to errors.

Every transport fault is sorted by whether the request may have reached YunPian: only a failure
to connect (aiohttp raises those, and only those, as ClientConnectorError or
ConnectionTimeoutError) is retried or called safe (design.md §6); once connected, the request may
have left, whatever fails next.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from yunpian_sms_server.errors import (
    DELIVERY_UNKNOWN,
    Reason,
    ServiceError,
    provider_error,
)
from yunpian_sms_server.phone import mask_numbers_in_text

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
TEMPLATES_PATH: Final = "/v2/tpl/get.json"
# Time kept back from the caller's deadline so our answer reaches it before it gives up.
DEADLINE_MARGIN_S: Final = 0.1
# Below this there is no point calling YunPian: we answer at once, having sent nothing.
MIN_UPSTREAM_BUDGET_S: Final = 0.01
# Connection failures (nothing sent) are retried this many times in all, within the deadline.
CONNECT_ATTEMPTS: Final = 3
CONNECT_RETRY_BACKOFF_S: Final = 0.05
# Connections to YunPian kept open at once; beyond this, calls queue for a free one.
CONNECTION_LIMIT: Final = 256
# Sent with every call (the session's default headers).
HEADERS: Final = {
    "Accept": "application/json;charset=utf-8",
    "Content-Type": "application/x-www-form-urlencoded;charset=utf-8",
}
# Fees stay the text YunPian wrote ("0.05"); sids parse as exact integers.
_DECODER: Final = json.JSONDecoder(parse_float=str)
# What aiohttp raises when no connection to YunPian was made: nothing was sent.
_NOT_CONNECTED: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass(frozen=True, slots=True)
class SendResult:
    """YunPian's answer to an accepted single_send, its fields as YunPian wrote them."""

    sid: str
    mobile: str
    count: int
    fee: str
    unit: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _delivery_unknown(reason: Reason, message: str) -> ServiceError:
    return ServiceError(reason, message, metadata={"delivery": DELIVERY_UNKNOWN})


def _parse_answer(status: int, body: bytes, subject: str) -> Any:
    """Parses an answer; raises the ServiceError of a YunPian refusal or a malformed answer.

    A list (tpl/get.json's answer) is returned as it is: only objects carry a `code`.
    """
    try:
        answer = _DECODER.decode(body.decode())
    # RecursionError: a body such as "[[[[…" nested past the interpreter's recursion limit.
    except (ValueError, UnicodeDecodeError, RecursionError):
        answer = None
    if isinstance(answer, list) and status == 200:
        return answer
    if not isinstance(answer, dict) or not _is_int(answer.get("code")):
        if status >= 500:
            raise ServiceError(
                Reason.PROVIDER_UNAVAILABLE,
                f"YunPian answered HTTP {status} without an API answer.",
                metadata={"http_status": str(status)},
            )
        raise _delivery_unknown(
            Reason.PROVIDER_BAD_RESPONSE,
            f"YunPian's answer (HTTP {status}) is not the documented JSON.",
        )
    code = answer["code"]
    if code != 0:
        msg = answer.get("msg")
        detail = answer.get("detail")
        raise provider_error(
            code,
            mask_numbers_in_text(msg if isinstance(msg, str) else ""),
            mask_numbers_in_text(detail if isinstance(detail, str) else ""),
            subject,
        )
    return answer


class YunpianClient:
    """Calls YunPian's API through one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        self._session = session
        self._on_latency = on_latency
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s

    def budget_s(self, time_remaining: float | None) -> float:
        """How long one call may take: the configured timeout, or less to meet the deadline."""
        if time_remaining is None:
            return self._timeout_s
        return min(self._timeout_s, time_remaining - DEADLINE_MARGIN_S)

    async def _post(
        self, path: str, form: dict[str, str], *, subject: str, time_remaining: float | None
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_s(time_remaining)
        url = self._base_url + path
        # Encoded here, once: a dict would go through aiohttp's FormData on every attempt.
        body = urlencode({"apikey": self._api_key, **form}).encode()
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            budget = deadline - loop.time()
            if budget < MIN_UPSTREAM_BUDGET_S:
                raise ServiceError(
                    Reason.PROVIDER_TIMEOUT,
                    "The call's deadline left no time to reach YunPian; nothing was sent.",
                )
            started = loop.time()
            try:
                async with self._session.post(
                    url,
                    data=body,
                    timeout=aiohttp.ClientTimeout(total=budget),
                ) as response:
                    answer = await response.read()
                    if self._on_latency is not None:
                        self._on_latency(path, loop.time() - started)
                    return _parse_answer(response.status, answer, subject)
            except _NOT_CONNECTED as error:
                if attempt == CONNECT_ATTEMPTS or isinstance(error, TimeoutError):
                    raise ServiceError(
                        Reason.PROVIDER_UNREACHABLE,
                        "YunPian could not be reached; nothing was sent.",
                        metadata={"error": type(error).__name__},
                    ) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                raise self._lost(error) from None
            await asyncio.sleep(min(CONNECT_RETRY_BACKOFF_S * attempt, deadline - loop.time()))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _lost(error: BaseException) -> ServiceError:
        if isinstance(error, TimeoutError):
            return _delivery_unknown(
                Reason.PROVIDER_TIMEOUT,
                "YunPian did not answer in time; the SMS may have been sent.",
            )
        return _delivery_unknown(
            Reason.PROVIDER_CONNECTION_LOST,
            "The connection to YunPian was lost; the SMS may have been sent.",
        )

    async def single_send(
        self, mobile: str, text: str, *, subject: str, time_remaining: float | None
    ) -> SendResult:
        """Sends one SMS; `subject` is the masked number, `time_remaining` the RPC's."""
        answer = await self._post(
            SINGLE_SEND_PATH,
            {"mobile": mobile, "text": text},
            subject=subject,
            time_remaining=time_remaining,
        )
        try:
            sid, count, fee = answer["sid"], answer["count"], answer["fee"]  # a list: TypeError
            if not (_is_int(sid) and _is_int(count) and isinstance(fee, str | int)):
                raise TypeError
            return SendResult(
                sid=str(sid),
                mobile=str(answer.get("mobile", mobile)),
                count=count,
                fee=str(fee),
                unit=str(answer.get("unit", "")),
            )
        except (KeyError, TypeError):
            raise _delivery_unknown(
                Reason.PROVIDER_BAD_RESPONSE,
                "YunPian accepted the SMS but its answer lacks the documented fields.",
            ) from None

    async def templates(self, *, time_remaining: float | None) -> list[Mapping[str, Any]]:
        """Lists the account's templates (tpl/get.json without tpl_id)."""
        answer = await self._post(TEMPLATES_PATH, {}, subject="", time_remaining=time_remaining)
        if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
            raise ServiceError(
                Reason.PROVIDER_BAD_RESPONSE, "YunPian's template list is not the documented JSON."
            )
        return answer

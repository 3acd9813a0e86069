"""The YunPian HTTP client: one `single_send.json` call per SendCode, answers mapped to errors.

Every transport fault is sorted by whether the request may have reached YunPian: only a failure
to connect is retried or called safe; once connected, the request may have left, whatever fails
next. Which it was is known from the session's connector, which marks the call's `SendAttempt`
as soon as it has a connection: an exception cannot tell (a connect cut by the total timeout is
a bare TimeoutError), and a call that is cancelled raises nothing of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp

from yunpian_sms_server.errors import (
    DELIVERY_UNKNOWN,
    FieldViolation,
    QuotaViolation,
    Reason,
    ServiceError,
    bounded,
)
from yunpian_sms_server.phone import mask_numbers_in_text

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
TEMPLATES_PATH: Final = "/v2/tpl/get.json"
PULL_STATUS_PATH: Final = "/v2/sms/pull_status.json"
# Time kept back from the caller's deadline so our answer reaches it before it gives up.
# What stands in YunPian's words for a secret they repeat (the API key, the code sent).
REDACTED: Final = "[redacted]"
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
# Runs of the characters a form value escapes (all but quote_plus's safe ones); and how many of
# them are remembered escaped: they are pieces of the configured templates (a code is letters and
# digits, never in one), the "+" of an international number, a configured URL.
_UNSAFE_RUN: Final = re.compile(r"[^0-9A-Za-z_.~-]+")
ESCAPED_RUNS_KEPT: Final = 256
# What a failed call to YunPian raises (besides our own ServiceErrors).
_TRANSPORT_ERRORS: Final = (TimeoutError, aiohttp.ClientError, OSError)


@functools.lru_cache(maxsize=ESCAPED_RUNS_KEPT)
def _escaped_run(run: str) -> str:
    return quote_plus(run)


def _escaped_match(match: re.Match[str]) -> str:
    return _escaped_run(match.group())


def form_value(value: str) -> str:
    """`quote_plus(value)`, made of the escaped runs remembered: escaping is per character, so
    the escaped text is its safe characters and its runs escaped, each the same every call. A
    template's Chinese text costs urllib's escaping ~8 µs per send, byte by byte."""
    if value.isascii() and value.isalnum():
        return value
    return _UNSAFE_RUN.sub(_escaped_match, value)


def form_body(form: Mapping[str, str], head: str = "") -> bytes:
    """`urlencode(form)` as bytes (`head`, already encoded, first); the keys must be safe."""
    pairs = [f"{key}={form_value(value)}" for key, value in form.items()]
    return "&".join([head, *pairs] if head else pairs).encode()


class SendAttempt:
    """How far one call to YunPian got: `connected` once a connection was made for it.

    From then on the request may have left, so an interrupted call may have sent the SMS.
    """

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


# The attempt of the call this task is making, for the connector to mark.
_current_attempt: contextvars.ContextVar[SendAttempt | None] = contextvars.ContextVar(
    "yunpian_attempt", default=None
)


class YunpianConnector(aiohttp.TCPConnector):
    """A TCP connector that marks the current call's SendAttempt once it has a connection."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        attempt = _current_attempt.get()
        if attempt is not None:
            attempt.connected = True
        return connection


def open_session(timeout_s: float) -> aiohttp.ClientSession:
    """The one HTTP session to YunPian of a process: its timeout, headers and connector."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=YunpianConnector(limit=CONNECTION_LIMIT),
        headers=HEADERS,
    )


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


@dataclass(frozen=True, slots=True)
class _Scrub:
    """Makes YunPian's words fit for a caller and the logs (an answer may repeat the request):
    the number sent to, whole, becomes `masked`; the API key and the code sent, in any case,
    become REDACTED; then any other number-like run is masked."""

    secrets: Sequence[str]
    mobile: str = ""
    masked: str = ""

    def __call__(self, text: str) -> str:
        if self.mobile:
            text = text.replace(self.mobile, self.masked)
        present = sorted({secret for secret in self.secrets if secret}, key=len, reverse=True)
        if present:
            pattern = "|".join(re.escape(secret) for secret in present)
            text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
        return mask_numbers_in_text(text)


def _parse_answer(status: int, body: bytes, subject: str, scrub: _Scrub) -> Any:
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
            scrub(msg if isinstance(msg, str) else ""),
            scrub(detail if isinstance(detail, str) else ""),
            subject,
        )
    return answer


def answer_code(body: bytes) -> int | None:
    """The `code` of an answer that is a JSON object with one (0: accepted); else None."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    code = answer.get("code") if isinstance(answer, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


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
        # The form's first field, the same on every call: encoded once (not remembered).
        self._form_head = f"apikey={quote_plus(api_key)}"

    def budget_s(self, time_remaining: float | None) -> float:
        """How long one call may take: the configured timeout, or less to meet the deadline."""
        if time_remaining is None:
            return self._timeout_s
        return min(self._timeout_s, time_remaining - DEADLINE_MARGIN_S)

    async def _post(
        self,
        path: str,
        form: dict[str, str],
        *,
        subject: str,
        time_remaining: float | None,
        attempt: SendAttempt | None = None,
        code: str = "",
    ) -> Any:
        attempt = attempt or SendAttempt()
        marking = _current_attempt.set(attempt)
        scrub = _Scrub((self._api_key, code), form.get("mobile", ""), subject)
        try:
            return await self._post_attempts(path, form, subject, time_remaining, attempt, scrub)
        finally:
            _current_attempt.reset(marking)

    async def _post_attempts(
        self,
        path: str,
        form: dict[str, str],
        subject: str,
        time_remaining: float | None,
        attempt: SendAttempt,
        scrub: _Scrub,
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_s(time_remaining)
        url = self._base_url + path
        # Encoded here, once: a dict would go through aiohttp's FormData on every attempt.
        body = form_body(form, self._form_head)
        for tries in range(1, CONNECT_ATTEMPTS + 1):
            budget = deadline - loop.time()
            if budget < MIN_UPSTREAM_BUDGET_S:
                raise ServiceError(
                    Reason.PROVIDER_TIMEOUT,
                    "The call's deadline left no time to reach YunPian; nothing was sent.",
                )
            started = loop.time()
            try:
                status, answer = await self._exchange(path, url, body, budget, tries)
            except _TRANSPORT_ERRORS as error:
                if attempt.connected:
                    raise self._lost(error) from None
                if tries == CONNECT_ATTEMPTS or isinstance(error, TimeoutError):
                    raise ServiceError(
                        Reason.PROVIDER_UNREACHABLE,
                        "YunPian could not be reached; nothing was sent.",
                        metadata={"error": type(error).__name__},
                    ) from None
            else:
                if self._on_latency is not None:
                    self._on_latency(path, loop.time() - started)
                return _parse_answer(status, answer, subject, scrub)
            await asyncio.sleep(min(CONNECT_RETRY_BACKOFF_S * tries, deadline - loop.time()))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, path: str, url: str, body: bytes, budget_s: float, tries: int
    ) -> tuple[int, bytes]:
        """One POST of `body` to `url` (YunPian's `path`), the call's try number `tries`,
        within `budget_s`: the HTTP status and the body of the answer. (traced_adapters makes
        a span of it.)"""
        async with self._session.post(
            url, data=body, timeout=aiohttp.ClientTimeout(total=budget_s)
        ) as response:
            return response.status, await response.read()

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
        self,
        mobile: str,
        text: str,
        *,
        subject: str,
        time_remaining: float | None,
        attempt: SendAttempt | None = None,
        callback_url: str = "",
        code: str = "",
    ) -> SendResult:
        """Sends one SMS; `subject` is the masked number, `time_remaining` the RPC's.

        `attempt` is marked connected once the request may have left. With `callback_url`,
        YunPian pushes the message's delivery report there. `code`, the code in `text`, never
        appears in an error, whatever YunPian answers.
        """
        form = {"mobile": mobile, "text": text}
        if callback_url:
            form["callback_url"] = callback_url
        answer = await self._post(
            SINGLE_SEND_PATH,
            form,
            subject=subject,
            time_remaining=time_remaining,
            attempt=attempt,
            code=code,
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

    async def pull_status(self, page_size: int) -> list[Any]:
        """Takes up to `page_size` delivery reports: each is returned once, then gone at YunPian.

        The items are as YunPian wrote them (delivery_state.parse_reports reads them).
        """
        answer = await self._post(
            PULL_STATUS_PATH, {"page_size": str(page_size)}, subject="", time_remaining=None
        )
        if not isinstance(answer, list):
            raise ServiceError(
                Reason.PROVIDER_BAD_RESPONSE, "YunPian's report list is not the documented JSON."
            )
        return answer

    async def templates(self, *, time_remaining: float | None) -> list[Mapping[str, Any]]:
        """Lists the account's templates (tpl/get.json without tpl_id)."""
        answer = await self._post(TEMPLATES_PATH, {}, subject="", time_remaining=time_remaining)
        if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
            raise ServiceError(
                Reason.PROVIDER_BAD_RESPONSE, "YunPian's template list is not the documented JSON."
            )
        return answer


# --- What YunPian's answer codes mean (its API's error code table) ---------------------

# How long a caller should wait after YunPian's per-key quota refusals (-4, -5).
PROVIDER_QUOTA_RETRY_S: Final = 60.0
_PROVIDER_REASONS: Final[Mapping[int, Reason]] = {
    **dict.fromkeys((5, 7, 60), Reason.PROVIDER_TEMPLATE_REJECTED),
    **dict.fromkeys((15, 16, 18, -57), Reason.PROVIDER_SIGNATURE_REJECTED),
    **dict.fromkeys((20, 23), Reason.PROVIDER_REGION_NOT_SUPPORTED),
    3: Reason.PROVIDER_INSUFFICIENT_BALANCE,
    **dict.fromkeys((-1, -2, -3), Reason.PROVIDER_AUTH_FAILED),
    **dict.fromkeys((13, 27, 40, 55, -11, -62), Reason.PROVIDER_ACCOUNT_ERROR),
    **dict.fromkeys((4, 52), Reason.PROVIDER_CONTENT_BLOCKED),
    10: Reason.PROVIDER_RECIPIENT_BLOCKED,
    56: Reason.PROVIDER_PHONE_REJECTED,
    **dict.fromkeys((8, 33, 9, 22, 53, 17, 43), Reason.PROVIDER_RATE_LIMITED),
    **dict.fromkeys((-4, -5), Reason.PROVIDER_QUOTA_EXCEEDED),
    **dict.fromkeys((-50, -51, -53), Reason.PROVIDER_UNAVAILABLE),
}
# How long YunPian's per-number limits make a caller wait, by answer code.
PROVIDER_RETRY_DELAYS_S: Final[Mapping[int, float]] = {
    **dict.fromkeys((8, 33), 30.0),
    9: 300.0,
    **dict.fromkeys((22, 53), 3600.0),
    **dict.fromkeys((17, 43), 86400.0),
    **dict.fromkeys((-4, -5), PROVIDER_QUOTA_RETRY_S),
}
# YunPian's "parameter format wrong" is about the phone number when its detail names `mobile`.
_PARAMETER_FORMAT_WRONG: Final = 2
_MESSAGES: Final[Mapping[Reason, str]] = {
    Reason.PROVIDER_TEMPLATE_REJECTED: "YunPian has no approved template matching the SMS text.",
    Reason.PROVIDER_SIGNATURE_REJECTED: "YunPian refused the SMS signature.",
    Reason.PROVIDER_REGION_NOT_SUPPORTED: "YunPian cannot send to this number's region.",
    Reason.PROVIDER_INSUFFICIENT_BALANCE: "The YunPian account balance is insufficient.",
    Reason.PROVIDER_AUTH_FAILED: "YunPian refused the API key or the caller's IP address.",
    Reason.PROVIDER_ACCOUNT_ERROR: "The YunPian account cannot send this SMS.",
    Reason.PROVIDER_CONTENT_BLOCKED: "YunPian blocked the SMS content.",
    Reason.PROVIDER_RECIPIENT_BLOCKED: "YunPian blocked the recipient's number.",
    Reason.PROVIDER_PHONE_REJECTED: "YunPian refused the phone number.",
    Reason.PROVIDER_RATE_LIMITED: "YunPian's per-number sending limit was reached.",
    Reason.PROVIDER_QUOTA_EXCEEDED: "YunPian's API call quota was exceeded.",
    Reason.PROVIDER_UNAVAILABLE: "YunPian is temporarily unavailable.",
    Reason.PROVIDER_REJECTED_REQUEST: "YunPian rejected the request as malformed.",
}


def provider_error(yunpian_code: int, yunpian_msg: str, detail: str, subject: str) -> ServiceError:
    """Maps a YunPian error answer to its ServiceError.

    `yunpian_msg` and `detail` must already have their phone numbers masked; `subject` is the
    masked number the call was about (it names the exhausted quota).
    """
    yunpian_msg, detail = bounded(yunpian_msg), bounded(detail)
    reason = _PROVIDER_REASONS.get(yunpian_code, Reason.PROVIDER_REJECTED_REQUEST)
    if yunpian_code == _PARAMETER_FORMAT_WRONG and "mobile" in detail:
        reason = Reason.PROVIDER_PHONE_REJECTED
    message = f"{_MESSAGES[reason][:-1]} (YunPian code {yunpian_code})."
    metadata = {"yunpian_code": str(yunpian_code), "yunpian_msg": yunpian_msg}
    if detail:
        metadata["yunpian_detail"] = detail
    retry_after = PROVIDER_RETRY_DELAYS_S.get(yunpian_code)
    if reason is Reason.PROVIDER_PHONE_REJECTED:
        return ServiceError(
            reason,
            message,
            metadata=metadata,
            field_violation=FieldViolation("phone_number", detail or yunpian_msg or message),
        )
    quota = None
    if reason is Reason.PROVIDER_RATE_LIMITED:
        quota = QuotaViolation(subject, detail or yunpian_msg or message)
    return ServiceError(reason, message, metadata=metadata, quota=quota, retry_after_s=retry_after)

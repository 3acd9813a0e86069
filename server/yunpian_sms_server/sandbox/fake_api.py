"""The fake YunPian API under `/v2/`: `sms/single_send.json`, `sms/pull_status.json`,
`tpl/get.json` and `user/get.json`."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Final, cast
from urllib.parse import urlsplit

import phonenumbers
from aiohttp import web

from yunpian_sms_server.sandbox.account import Account
from yunpian_sms_server.sandbox.faults import misbehave
from yunpian_sms_server.sandbox.json_input import JsonObject
from yunpian_sms_server.sandbox.template_matching import (
    MAX_MATCH_STEPS,
    MatchBudget,
    MatchBudgetError,
)
from yunpian_sms_server.sandbox.templates import TemplateMatch
from yunpian_sms_server.sandbox.yunpian_wire import (
    API_PATHS,
    PULL_STATUS_PATH,
    SINGLE_SEND_PATH,
    TPL_GET_PATH,
    ApiError,
    json_response,
)

# Billing: up to 70 characters is one segment, longer texts 67 per segment.
SINGLE_SEGMENT_CHARS: Final = 70
MULTI_SEGMENT_CHARS: Final = 67
FEE_PER_SEGMENT: Final = Decimal("0.05")
FEE_UNIT: Final = "RMB"
ACCOUNT_BALANCE: Final = 1000.0
# Digits of the largest tpl_id (YunPian's ids are 64-bit).
MAX_TPL_ID_DIGITS: Final = len(str(2**64 - 1))
# pull_status.json's page_size: reports per pull, by default and at most.
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100

_MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_INTERNATIONAL_MOBILE = re.compile(r"\+[1-9][0-9]{5,14}")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Recipient:
    mobile: str  # as YunPian records it
    region: str | None  # ISO region of an international number; None for the mainland


class FakeYunpianApi:
    """Answers YunPian's API for an account, with the shapes and error bodies of the real one.

    Every refusal is HTTP 400 with `{"http_status_code": 400, "code": N, "msg": ..., "detail":
    ...}`. A GET (or any method but POST) on an API path is code 11 with HTTP 400; any other path
    under `/v2/` is HTTP 404 with a JSON body that has no `code`. Each request first meets the
    first pending fault that matches it (faults apply to POST requests only), then its apikey is
    checked (-1).
    """

    def __init__(self, account: Account) -> None:
        self._account = account

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answers any request under `/v2/`."""
        path = request.path
        self._account.request_counts[path] += 1
        if path not in API_PATHS:
            body = {"http_status_code": 404, "msg": "Not Found", "detail": f"no API at {path}"}
            return json_response(body, status=HTTPStatus.NOT_FOUND)
        if request.method != "POST":
            return ApiError(11).response()
        try:
            form = await request.post()
        except ValueError:
            return ApiError(14, "请求体解码失败").response()
        mobile = _form_field(form, "mobile")
        fault = self._account.take_fault(path, mobile)
        if fault is not None:
            quoted = {name: value for name, value in form.items() if isinstance(value, str)}
            if (answer := await misbehave(request, fault, quoted)) is not None:
                return answer
        try:
            if not self._account.has_api_key(_form_field(form, "apikey") or ""):
                raise ApiError(-1)
            if path == SINGLE_SEND_PATH:
                return self._single_send(form)
            if path == PULL_STATUS_PATH:
                return self._pull_status(form)
            if path == TPL_GET_PATH:
                return self._tpl_get(form)
            return json_response(_user())
        except ApiError as error:
            return error.response()

    def _single_send(self, form: Mapping[str, object]) -> web.Response:
        """Sends one text, or refuses it.

        The order of checks, after the apikey (-1): missing `mobile`/`text` (1), mobile format
        (2), template match (5, or 23 for a region outside an international template's list),
        then the per-number limits in this order: 8 (same content, 1/30 s), 9 (same content,
        3/5 min), 33 (1/30 s), 22 (3/h), 17 (10/24 h). The anti-bombing limits (33, 22, 17)
        count every accepted message to the number, whatever its template. Only accepted
        messages count, and limit history is recorded only while limits are enforced. The
        recorded text is the text as delivered, signature included; `count` and `fee` are
        computed from that length.

        The optional `uid` (any text) and `callback_url` are kept with the message for its
        delivery report; a `callback_url` that is no absolute http(s) URL is code 2, checked
        right after the mobile. The report of a message with a callback_url is pushed there,
        not pulled.
        """
        fields = {name: _form_field(form, name) for name in ("mobile", "text")}
        for name, value in fields.items():
            if value is None:
                raise ApiError(1, f"参数 {name} 必须传入")
        raw_mobile, text = cast(str, fields["mobile"]), cast(str, fields["text"])
        recipient = _parse_mobile(raw_mobile)
        if recipient is None:
            raise ApiError(2, f"参数 mobile 格式不正确，mobile:{raw_mobile}")
        callback_url = _form_field(form, "callback_url")
        if callback_url is not None and not _is_http_url(callback_url):
            raise ApiError(2, f"参数 callback_url 格式不正确，callback_url:{callback_url}")
        match = self._match_template(text, recipient)
        account = self._account
        now = account.clock()
        if account.enforce_limits:
            refused = account.limits.refusal(recipient.mobile, match.delivered_text, now)
            if refused is not None:
                raise ApiError(refused, mobile=recipient.mobile)
            account.limits.record(recipient.mobile, match.delivered_text, now)
        message = account.record_message(
            recipient.mobile,
            match.delivered_text,
            match.code,
            match.template.tpl_id,
            now,
            uid=_form_field(form, "uid"),
            callback_url=callback_url,
        )
        count = segment_count(match.delivered_text)
        return json_response(
            {
                "code": 0,
                "msg": "发送成功",
                "count": count,
                "fee": float(FEE_PER_SEGMENT * count),
                "unit": FEE_UNIT,
                "mobile": recipient.mobile,
                "sid": message.sid,
            }
        )

    def _match_template(self, text: str, recipient: _Recipient) -> TemplateMatch:
        """The first approved template of the recipient's kind that the text fills in.

        Domestic numbers match domestic templates, international ones international templates
        that list their region (else 23). The matches of one request share a MatchBudget: a
        text that would take more than MAX_MATCH_STEPS steps is answered code 5, with a warning.
        """
        region_refused = False
        budget = MatchBudget()
        for template in self._account.templates:
            if template.check_status != "SUCCESS" or template.international != (
                recipient.region is not None
            ):
                continue
            try:
                match = template.match(text, budget)
            except MatchBudgetError:
                _log.warning(
                    "Gave up matching a text after %d steps (template %d): its variables are "
                    "too ambiguous; answering code 5",
                    MAX_MATCH_STEPS,
                    template.tpl_id,
                )
                raise ApiError(5) from None
            if match is None:
                continue
            if recipient.region is None or template.allows_region(recipient.region):
                return match
            region_refused = True
        if region_refused:
            raise ApiError(23)
        raise ApiError(5)

    def _pull_status(self, form: Mapping[str, object]) -> web.Response:
        """The available reports, oldest first, at most `page_size`; handed out once.

        `page_size` is optional (default 20); anything but an integer from 1 to 100 is code 2
        naming it. The answer is v2's bare JSON array, `[]` when no report waits. Reports of
        messages sent with a callback_url are pushed instead and never listed here.
        """
        raw_size = _form_field(form, "page_size")
        page_size = DEFAULT_PAGE_SIZE
        if raw_size is not None:
            # At most 3 digits: int() of a huge number would only waste time.
            if not (raw_size.isascii() and raw_size.isdigit() and len(raw_size) <= 3) or not (
                1 <= int(raw_size) <= MAX_PAGE_SIZE
            ):
                raise ApiError(2, f"参数 page_size 格式不正确，page_size:{raw_size}")
            page_size = int(raw_size)
        reports = self._account.pull_reports(page_size)
        return json_response([report.to_wire() for report in reports])

    def _tpl_get(self, form: Mapping[str, object]) -> web.Response:
        """Every template, or the one `tpl_id` names (2 when it is no id, 5 when unknown)."""
        raw_id = _form_field(form, "tpl_id")
        if raw_id is None:
            return json_response([t.to_json() for t in self._account.templates])
        # Longer ids are no 64-bit id, and int() refuses (ValueError) past 4,300 digits.
        if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > MAX_TPL_ID_DIGITS:
            raise ApiError(2, f"参数 tpl_id 格式不正确，tpl_id:{raw_id}")
        template = self._account.template(int(raw_id))
        if template is None:
            raise ApiError(5, f"参数 tpl_id 对应的模板不存在，tpl_id:{raw_id}")
        return json_response(template.to_json())


def segment_count(delivered_text: str) -> int:
    """YunPian's billed segments for a text as delivered (signature included)."""
    length = len(delivered_text)
    return 1 if length <= SINGLE_SEGMENT_CHARS else math.ceil(length / MULTI_SEGMENT_CHARS)


def _parse_mobile(raw: str) -> _Recipient | None:
    """A mainland number or a valid `+` E.164 number; None otherwise.

    A mainland number is exactly 11 digits `1[3-9]xxxxxxxxx`; anything starting with `+` is
    international (`+86…` included: it needs an international template listing CN or ALL).
    """
    if _MAINLAND_MOBILE.fullmatch(raw):
        return _Recipient(raw, None)
    if not _INTERNATIONAL_MOBILE.fullmatch(raw):
        return None
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    region = phonenumbers.region_code_for_number(number)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return _Recipient(e164, region)


def _is_http_url(raw: str) -> bool:
    """Whether a callback_url is an absolute http or https URL with a host, without spaces."""
    if any(char.isspace() or not char.isprintable() for char in raw):
        return False
    try:
        url = urlsplit(raw)
        _ = url.port  # ValueError when the port is no number or out of range
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


def _user() -> JsonObject:
    """The flat account object of `user/get.json` (v2 does not wrap it under `user`)."""
    return {
        "nick": "sandbox",
        "gmt_created": "2024-01-01 00:00:00",
        "mobile": "13800000000",
        "email": "sandbox@example.com",
        "ip_whitelist": None,
        "api_version": "v2",
        "balance": ACCOUNT_BALANCE,
        "alarm_balance": 10.0,
        "emergency_contact": "",
        "emergency_mobile": "",
    }


def _form_field(form: Mapping[str, object], name: str) -> str | None:
    """A form value, or None when it is missing, empty or not text."""
    value = form.get(name)
    return value if isinstance(value, str) and value else None

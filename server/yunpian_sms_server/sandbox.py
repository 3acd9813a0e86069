"""A faithful local fake of YunPian's HTTP API (aiohttp.web), plus control endpoints for tests.

It implements `POST /v2/sms/single_send.json`, `/v2/tpl/get.json` and `/v2/user/get.json` with the
shapes and error bodies of YunPian's API: it checks the API key and the mobile number, matches the
text against its approved templates (code 5 when none matches), enforces YunPian's default
per-number limits (§6), records every accepted message and lets a test inject faults.

API behaviour worth knowing:

* Every refusal is HTTP 400 with `{"http_status_code": 400, "code": N, "msg": ..., "detail": ...}`.
  A GET (or any method but POST) on an API path is code 11 with HTTP 400; any other path under
  `/v2/` is HTTP 404 with a JSON body that has no `code`.
* Order of checks in `single_send.json`: apikey (-1), missing `mobile`/`text` (1), mobile format
  (2), template match (5, or 23 for a region outside an international template's list), then the
  per-number limits in this order: 8 (same content, 1/30 s), 9 (same content, 3/5 min),
  33 (1/30 s), 22 (3/h), 17 (10/24 h). The anti-bombing limits (33, 22, 17) count every accepted
  message to the number, whatever its template. Only accepted messages count. Limit history is
  recorded only while limits are enforced.
* A mainland number is exactly 11 digits `1[3-9]xxxxxxxxx`; anything starting with `+` is
  international (`+86…` included: it needs an international template listing CN or ALL).
* A template matches when the text equals its content with the leading 【signature】 stripped (or
  with it); each `#name#` variable matches 1-16 ASCII letters/digits (a template uses at most
  `MAX_VARIABLES`). Matching takes time linear in the text (sandbox_matching); a text whose
  matches would take more than `MAX_MATCH_STEPS` steps is answered code 5, with a warning logged.
  The recorded text is the text as delivered, signature included; `count` and `fee` are computed
  from that length.
* Sids start above 2**53 so callers prove they keep them exact.

Control endpoints (JSON; no apikey; a bad body is HTTP 400 `{"error": "<what is wrong>"}`):

* `GET /sandbox/messages[?mobile=M]`: `{"messages": [{"sid": "<decimal string>", "mobile", "text",
  "code", "tpl_id", "at"}]}`, oldest first (the last `MAX_RECORDED_MESSAGES` are kept);
  `DELETE /sandbox/messages` clears them.
* `POST /sandbox/faults` with a fault object queues it (FIFO); `GET /sandbox/faults` lists pending
  ones with their `remaining` count; `DELETE /sandbox/faults` clears them. A fault is one of
  `{"kind": "error", "code": 22}` (that YunPian error, nothing recorded),
  `{"kind": "delay", "seconds": 2.5}` (sleep, then handle the request normally: it may still be
  accepted and recorded), `{"kind": "http_status", "status": 502}` (an nginx-like HTML page),
  `{"kind": "malformed", "body": "not_json" | "wrong_shape"}` (HTTP 200, truncated JSON or
  `{"result": "ok"}`), `{"kind": "drop"}` (the request is read, then the connection is closed
  without an answer; nothing recorded). Optional keys: `"times": N` (default 1),
  `"path": "/v2/..."` (one of the three API paths; default single_send), `"mobile": "..."` (only
  requests whose `mobile` form value is exactly that). Faults apply to POST requests only; a
  request consumes at most one fault, the first pending one that matches it.
* `POST /sandbox/templates` with `{"tpl_id", "tpl_content", "check_status", "reason",
  "country_code", "lang"}` adds or replaces a template; `GET /sandbox/templates` lists them.
* `POST /sandbox/limits` with `{"enforce": true|false}` turns the per-number limits on or off;
  `GET /sandbox/limits` shows the setting.
* `POST /sandbox/reset`: clears messages, faults, limit history and request counts and restores the
  limit setting; templates stay.
* `GET /sandbox/stats`: `{"requests": {"<path>": count}, "messages": n, "pending_faults": n}`.
* `GET /healthz`: 200 `ok`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from types import TracebackType
from typing import Final, Literal, Self, cast, get_args

import phonenumbers
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from yunpian_sms_server.listeners import SANDBOX_LISTENER, start_tcp_site
from yunpian_sms_server.sandbox_matching import (
    MAX_MATCH_STEPS,
    MAX_VARIABLES,
    MatchBudget,
    MatchBudgetError,
    TemplatePattern,
    variable_count,
)

SANDBOX_API_KEY: Final = "0123456789abcdef0123456789abcdef"
DEFAULT_SIGNATURE: Final = "【云片沙箱】"

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
TPL_GET_PATH: Final = "/v2/tpl/get.json"
USER_GET_PATH: Final = "/v2/user/get.json"
API_PATHS: Final = (SINGLE_SEND_PATH, TPL_GET_PATH, USER_GET_PATH)

# The first sid handed out: above 2**53, where a float (JavaScript number, JSON parsed as double)
# loses precision, so a caller that does not keep sids exact shows it at once.
FIRST_SID: Final = 2**53 + 1000
# Accepted messages kept for GET /sandbox/messages; older ones are forgotten.
MAX_RECORDED_MESSAGES: Final = 10_000
# Numbers and (number, content) pairs whose limit history is kept; the least recent go first.
MAX_TRACKED_KEYS: Final = 100_000
MAX_PENDING_FAULTS: Final = 1_000
MAX_TEMPLATES: Final = 1_000
MAX_FAULT_DELAY_S: Final = 600.0
# An error fault's own `detail` text: up to this long, to try how a caller copes with any answer.
MAX_FAULT_DETAIL_CHARS: Final = 100_000
MAX_TEMPLATE_CHARS: Final = 1_000
# Digits of the largest tpl_id (YunPian's ids are 64-bit).
MAX_TPL_ID_DIGITS: Final = len(str(2**64 - 1))
# How long closing a running sandbox waits for requests in progress (e.g. a delay fault).
SHUTDOWN_TIMEOUT_S: Final = 1.0

# Billing: up to 70 characters is one segment, longer texts 67 per segment.
SINGLE_SEGMENT_CHARS: Final = 70
MULTI_SEGMENT_CHARS: Final = 67
FEE_PER_SEGMENT: Final = Decimal("0.05")
FEE_UNIT: Final = "RMB"
ACCOUNT_BALANCE: Final = 1000.0

CODE_VARIABLE: Final = "code"

CheckStatus = Literal["SUCCESS", "CHECKING", "FAIL"]
CHECK_STATUSES: Final[tuple[str, ...]] = get_args(CheckStatus)
FaultKind = Literal["error", "delay", "http_status", "malformed", "drop"]
FAULT_KINDS: Final[tuple[str, ...]] = get_args(FaultKind)
MalformedBody = Literal["not_json", "wrong_shape"]
MALFORMED_BODIES: Final[tuple[str, ...]] = get_args(MalformedBody)

# YunPian's `msg` per code (its error code table), so an injected code reads like the real thing.
# Code 33 really answers with a null msg and the text only in `detail`.
MESSAGES: Final[Mapping[int, str | None]] = {
    1: "请求参数缺失",
    2: "请求参数格式错误",
    3: "账户余额不足",
    4: "关键词屏蔽",
    5: "未找到匹配的模板",
    6: "添加模板失败",
    7: "模板不可用",
    8: "同一手机号30秒内重复提交相同的内容",
    9: "同一手机号5分钟内重复提交相同的内容超过3次",
    10: "手机号防骚扰名单过滤",
    11: "接口不支持GET方式调用",
    12: "接口不支持POST方式调用",
    13: "营销短信暂停发送",
    14: "解码失败",
    15: "签名不匹配",
    16: "签名格式不正确",
    17: "24小时内同一手机号发送次数超过限制",
    18: "签名校验失败",
    19: "请求已失效",
    20: "不支持的国家地区",
    21: "解密失败",
    22: "1小时内同一手机号发送次数超过限制",
    23: "号码归属地不在模板可发送的地区内",
    24: "添加告警设置失败",
    25: "手机号和内容个数不匹配",
    26: "流量包错误",
    27: "未开通金额计费",
    28: "运营商错误",
    33: None,
    34: "签名创建失败",
    40: "未开启白名单",
    43: "一天内同一手机号发送次数超过限制",
    48: "参数长度超过限制",
    52: "关键词屏蔽",
    53: "手机号接收超过频率限制",
    55: "服务已下线",
    56: "手机号码格式不正确",
    58: "短信内容变量参数格式错误",
    60: "模版已失效",
    -1: "非法的apikey",
    -2: "API没有权限",
    -3: "IP没有权限",
    -4: "访问次数超限",
    -5: "访问频率超限",
    -6: "不支持批量发送",
    -7: "HTTP请求错误",
    -8: "不支持流量业务",
    -11: "用户未开启该功能",
    -50: "未知异常",
    -51: "系统繁忙",
    -52: "充值失败",
    -53: "提交短信失败",
    -54: "记录已经存在",
    -55: "记录不存在",
    -56: "赠送失败",
    -57: "用户开通过固定签名功能，但签名未设置",
    -62: "无效资质信息",
}
UNKNOWN_CODE_MESSAGE: Final = "未知错误"
# Details where YunPian's differ from the msg (used for the sandbox's own refusals and injected
# codes); `{mobile}` is the request's mobile value. An injected 2 is about the mobile, as the one
# recorded answer is.
DETAILS: Final[Mapping[int, str]] = {
    -1: "请检查的apikey是否正确",
    2: "参数 mobile 格式不正确，mobile:{mobile}",
    5: "未自动匹配到合适的模板",
    17: "验证码类短信24小时内同一手机号发送次数不能超过10次",
    22: "验证码类短信1小时内同一手机号发送次数不能超过3次",
    33: "号码：{mobile}, 超过频率，同一个手机号同一验证码模板每30秒只能发送一条",
}

_SIGNATURE = re.compile(r"【[^】]*】")
_MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_INTERNATIONAL_MOBILE = re.compile(r"\+[1-9][0-9]{5,14}")
_REGION_LIST = re.compile(r"ALL|[A-Z]{2}(?:,[A-Z]{2})*")
_ALL_REGIONS: Final = "ALL"

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
JsonObject = dict[str, object]


class SandboxInputError(ValueError):
    """A template, fault or control request the sandbox refuses; the message says why."""


@dataclass
class SandboxTemplate:
    """One template of the fake account, in YunPian's form (`#code#`, leading 【signature】)."""

    tpl_id: int
    content: str
    check_status: str = "SUCCESS"
    reason: str | None = None
    # None: a domestic template. Else the regions an international one may go to: "US,SG" or "ALL".
    country_code: str | None = None
    lang: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.tpl_id) or self.tpl_id <= 0:
            raise SandboxInputError("tpl_id must be a positive integer")
        if not isinstance(self.content, str) or not self.content.strip():
            raise SandboxInputError("tpl_content must be a non-empty string")
        if len(self.content) > MAX_TEMPLATE_CHARS:
            raise SandboxInputError(f"tpl_content must be at most {MAX_TEMPLATE_CHARS} characters")
        if variable_count(self.content) > MAX_VARIABLES:
            raise SandboxInputError(f"tpl_content may use at most {MAX_VARIABLES} #variables#")
        if self.check_status not in CHECK_STATUSES:
            raise SandboxInputError(f"check_status must be one of {', '.join(CHECK_STATUSES)}")
        for name in ("reason", "lang"):
            if not isinstance(getattr(self, name), str | None):
                raise SandboxInputError(f"{name} must be a string or null")
        if self.country_code is not None and (
            not isinstance(self.country_code, str) or not _REGION_LIST.fullmatch(self.country_code)
        ):
            raise SandboxInputError(
                'country_code must be null, "ALL" or comma-separated ISO regions such as "US,SG"'
            )

    @property
    def international(self) -> bool:
        """Whether this is an international template (it lists the regions it may go to)."""
        return self.country_code is not None

    def allows_region(self, region: str) -> bool:
        """Whether an international template may be sent to a number of this region."""
        if self.country_code is None:
            return False
        return self.country_code == _ALL_REGIONS or region in self.country_code.split(",")

    def to_json(self) -> JsonObject:
        """The object `tpl/get.json` answers for this template."""
        return {
            "tpl_id": self.tpl_id,
            "tpl_content": self.content,
            "check_status": self.check_status,
            "reason": self.reason,
            "country_code": self.country_code,
            "lang": self.lang,
        }

    @classmethod
    def from_json(cls, data: object) -> SandboxTemplate:
        """Builds a template from a `tpl/get.json`-shaped object; SandboxInputError if it is bad."""
        obj = _json_object(data, "template")
        _reject_unknown_keys(
            obj, {"tpl_id", "tpl_content", "check_status", "reason", "country_code", "lang"}
        )
        for required in ("tpl_id", "tpl_content"):
            if required not in obj:
                raise SandboxInputError(f"{required} is required")
        check_status = obj.get("check_status", "SUCCESS")
        if not isinstance(check_status, str):
            raise SandboxInputError("check_status must be a string")
        return cls(
            tpl_id=cast(int, obj["tpl_id"]),
            content=cast(str, obj["tpl_content"]),
            check_status=check_status,
            reason=cast(str | None, obj.get("reason")),
            country_code=cast(str | None, obj.get("country_code")),
            lang=cast(str | None, obj.get("lang")),
        )


@dataclass(frozen=True)
class SentMessage:
    """One message the sandbox accepted."""

    sid: int
    mobile: str  # as recorded: 11 digits for the mainland, E.164 otherwise
    text: str  # as delivered, signature included
    code: str | None  # the `#code#` value, None when the template has no `#code#`
    tpl_id: int
    at: float  # unix time from the sandbox's clock

    def to_json(self) -> JsonObject:
        """The object `GET /sandbox/messages` lists; the sid is a decimal string."""
        return {
            "sid": str(self.sid),
            "mobile": self.mobile,
            "text": self.text,
            "code": self.code,
            "tpl_id": self.tpl_id,
            "at": self.at,
        }


_FAULT_PARAMETERS: Final[Mapping[str, str]] = {
    "error": "code",
    "delay": "seconds",
    "http_status": "status",
    "malformed": "body",
}


@dataclass(frozen=True)
class Fault:
    """A misbehaviour the sandbox shows to the next `times` API requests that match it.

    kind "error" needs `code` (a non-zero YunPian code) and may set its `detail` text, "delay"
    `seconds`, "http_status" `status` (400-599), "malformed" `body` ("not_json" or
    "wrong_shape"); "drop" takes none. A fault matches POST requests to `path` and, when `mobile`
    is set, only those with exactly that mobile value.
    """

    kind: FaultKind
    code: int | None = None
    seconds: float | None = None
    status: int | None = None
    body: MalformedBody | None = None
    times: int = 1
    path: str = SINGLE_SEND_PATH
    mobile: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise SandboxInputError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        needed = _FAULT_PARAMETERS.get(self.kind)
        for name in _FAULT_PARAMETERS.values():
            value = getattr(self, name)
            if name == needed and value is None:
                raise SandboxInputError(f'a fault of kind "{self.kind}" needs "{name}"')
            if name != needed and value is not None:
                raise SandboxInputError(f'"{name}" does not apply to a fault of kind "{self.kind}"')
        if self.code is not None and (not _is_int(self.code) or self.code == 0):
            raise SandboxInputError("code must be a non-zero integer (0 is success)")
        if self.seconds is not None and (
            not _is_number(self.seconds) or not 0 <= self.seconds <= MAX_FAULT_DELAY_S
        ):
            raise SandboxInputError(f"seconds must be a number from 0 to {MAX_FAULT_DELAY_S:g}")
        if self.status is not None and (not _is_int(self.status) or not 400 <= self.status <= 599):
            raise SandboxInputError("status must be an integer from 400 to 599")
        if self.body is not None and self.body not in MALFORMED_BODIES:
            raise SandboxInputError(f"body must be one of {', '.join(MALFORMED_BODIES)}")
        if not _is_int(self.times) or self.times < 1:
            raise SandboxInputError("times must be a positive integer")
        if self.path not in API_PATHS:
            raise SandboxInputError(f"path must be one of {', '.join(API_PATHS)}")
        if self.mobile is not None and (not isinstance(self.mobile, str) or not self.mobile):
            raise SandboxInputError("mobile must be a non-empty string")
        if self.detail is not None:
            if self.kind != "error":
                raise SandboxInputError('"detail" applies only to a fault of kind "error"')
            if not isinstance(self.detail, str) or len(self.detail) > MAX_FAULT_DETAIL_CHARS:
                raise SandboxInputError(
                    f"detail must be a string of at most {MAX_FAULT_DETAIL_CHARS} characters"
                )

    def matches(self, path: str, mobile: str | None) -> bool:
        """Whether a POST to `path` with this `mobile` form value is subject to the fault."""
        return path == self.path and (self.mobile is None or mobile == self.mobile)

    def to_json(self) -> JsonObject:
        """The fault as the control API writes it (only the keys that apply)."""
        data: JsonObject = {"kind": self.kind}
        if (parameter := _FAULT_PARAMETERS.get(self.kind)) is not None:
            data[parameter] = getattr(self, parameter)
        data.update(times=self.times, path=self.path)
        if self.mobile is not None:
            data["mobile"] = self.mobile
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Builds a fault from its JSON object; SandboxInputError names what is wrong."""
        obj = _json_object(data, "fault")
        _reject_unknown_keys(
            obj, {"kind", "times", "path", "mobile", "detail", *_FAULT_PARAMETERS.values()}
        )
        if "kind" not in obj:
            raise SandboxInputError(f"kind is required, one of {', '.join(FAULT_KINDS)}")
        for name in ("code", "status", "times"):
            if name in obj and not _is_int(obj[name]):
                raise SandboxInputError(f"{name} must be an integer")
        for name in ("kind", "body", "path", "mobile", "detail"):
            if name in obj and not isinstance(obj[name], str):
                raise SandboxInputError(f"{name} must be a string")
        if "seconds" in obj and not _is_number(obj["seconds"]):
            raise SandboxInputError("seconds must be a number")
        return cls(
            kind=cast(FaultKind, obj["kind"]),
            code=cast(int | None, obj.get("code")),
            seconds=None if obj.get("seconds") is None else float(cast(float, obj["seconds"])),
            status=cast(int | None, obj.get("status")),
            body=cast(MalformedBody | None, obj.get("body")),
            times=cast(int, obj.get("times", 1)),
            path=cast(str, obj.get("path", SINGLE_SEND_PATH)),
            mobile=cast(str | None, obj.get("mobile")),
            detail=cast(str | None, obj.get("detail")),
        )


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int

    def to_json(self) -> JsonObject:
        return {**self.fault.to_json(), "remaining": self.remaining}


@dataclass(frozen=True)
class _Limit:
    """At most `count` accepted messages per `window_s`, per number or per (number, content)."""

    code: int
    count: int
    window_s: float
    same_content: bool


# YunPian's default per-number limits (anti-bombing, anti-harassment), in the order they are
# checked: the same-content rules first since they are the more specific reason for a refusal.
PER_NUMBER_LIMITS: Final = (
    _Limit(code=8, count=1, window_s=30.0, same_content=True),
    _Limit(code=9, count=3, window_s=300.0, same_content=True),
    _Limit(code=33, count=1, window_s=30.0, same_content=False),
    _Limit(code=22, count=3, window_s=3600.0, same_content=False),
    _Limit(code=17, count=10, window_s=86400.0, same_content=False),
)


class _SendHistory:
    """The recent accepted sends per key, enough to judge every limit of one kind.

    Only the last `depth` timestamps per key are kept (a rule "at most n per window" needs only
    the n-th most recent one); keys are kept in order of last use so expired ones are pruned from
    the front in O(1) each.
    """

    def __init__(self, limits: Iterable[_Limit]) -> None:
        limits = tuple(limits)
        self._depth = max(limit.count for limit in limits)
        self._horizon_s = max(limit.window_s for limit in limits)
        self._times: OrderedDict[object, deque[float]] = OrderedDict()

    def refused(self, key: object, limit: _Limit, now: float) -> bool:
        times = self._times.get(key)
        return (
            times is not None
            and len(times) >= limit.count
            and now - times[-limit.count] < limit.window_s
        )

    def record(self, key: object, now: float) -> None:
        times = self._times.pop(key, None) or deque(maxlen=self._depth)
        times.append(now)
        self._times[key] = times
        while self._times:
            oldest = next(iter(self._times.values()))
            if len(self._times) <= MAX_TRACKED_KEYS and now - oldest[-1] < self._horizon_s:
                break
            self._times.popitem(last=False)

    def clear(self) -> None:
        self._times.clear()


@dataclass(frozen=True)
class _Recipient:
    mobile: str  # as YunPian records it
    region: str | None  # ISO region of an international number; None for the mainland


@dataclass(frozen=True)
class _Match:
    template: SandboxTemplate
    delivered_text: str
    code: str | None


class _ApiError(Exception):
    """A YunPian refusal: becomes the HTTP 400 error body."""

    def __init__(self, code: int, detail: str | None = None, *, mobile: str = "") -> None:
        super().__init__(code)
        self.code = code
        if detail is None:
            default = DETAILS.get(code) or MESSAGES.get(code) or UNKNOWN_CODE_MESSAGE
            detail = default.replace("{mobile}", mobile)
        self.detail = detail

    def response(self) -> web.Response:
        body = {
            "http_status_code": HTTPStatus.BAD_REQUEST.value,
            "code": self.code,
            "msg": MESSAGES.get(self.code, UNKNOWN_CODE_MESSAGE),
            "detail": self.detail,
        }
        return _json_response(body, status=HTTPStatus.BAD_REQUEST)


class Sandbox:
    """The fake YunPian account: templates, accepted messages, limits and pending faults.

    `app` serves both the API and the control endpoints. `clock` gives the unix time used for
    limits and message timestamps, so tests can move time without sleeping.
    """

    def __init__(
        self,
        api_key: str = SANDBOX_API_KEY,
        templates: Iterable[SandboxTemplate] = (),
        *,
        enforce_limits: bool = True,
        clock: Clock = time.time,
    ) -> None:
        if not api_key:
            raise SandboxInputError("api_key must not be empty")
        self._api_key = api_key.encode()
        self._templates: dict[int, SandboxTemplate] = {}
        for template in templates:
            self.add_template(template)
        self._initial_enforce_limits = enforce_limits
        self.enforce_limits = enforce_limits
        self.clock = clock
        self.messages: list[SentMessage] = []
        self.request_counts: Counter[str] = Counter()
        self._faults: list[_PendingFault] = []
        self._by_number = _SendHistory(x for x in PER_NUMBER_LIMITS if not x.same_content)
        self._by_content = _SendHistory(x for x in PER_NUMBER_LIMITS if x.same_content)
        self._next_sid = FIRST_SID
        self.app = self._build_app()

    def __repr__(self) -> str:
        # Never show the API key.
        return (
            f"Sandbox(templates={len(self._templates)}, messages={len(self.messages)}, "
            f"enforce_limits={self.enforce_limits})"
        )

    # -- Python control API ------------------------------------------------------------------

    @property
    def templates(self) -> list[SandboxTemplate]:
        """The account's templates, in the order they were first added."""
        return list(self._templates.values())

    def add_template(self, template: SandboxTemplate) -> None:
        """Adds a template, or replaces the one with the same tpl_id."""
        if template.tpl_id not in self._templates and len(self._templates) >= MAX_TEMPLATES:
            raise SandboxInputError(f"the sandbox holds at most {MAX_TEMPLATES} templates")
        self._templates[template.tpl_id] = template

    def remove_template(self, tpl_id: int) -> None:
        """Removes a template; KeyError if there is none with this id."""
        del self._templates[tpl_id]

    def set_template_status(
        self, tpl_id: int, check_status: str, reason: str | None = None
    ) -> None:
        """Moves a template to SUCCESS, CHECKING or FAIL (with a reason); KeyError if unknown."""
        if check_status not in CHECK_STATUSES:
            raise SandboxInputError(f"check_status must be one of {', '.join(CHECK_STATUSES)}")
        template = self._templates[tpl_id]
        template.check_status = check_status
        template.reason = reason

    def inject(self, fault: Fault) -> None:
        """Queues a fault for the next `fault.times` API requests that match it."""
        if len(self._faults) >= MAX_PENDING_FAULTS:
            raise SandboxInputError(f"at most {MAX_PENDING_FAULTS} faults may be pending")
        self._faults.append(_PendingFault(fault, fault.times))

    @property
    def pending_faults(self) -> list[tuple[Fault, int]]:
        """The queued faults with how many more requests each applies to."""
        return [(pending.fault, pending.remaining) for pending in self._faults]

    def clear_faults(self) -> None:
        """Drops every pending fault."""
        self._faults.clear()

    def messages_to(self, mobile: str) -> list[SentMessage]:
        """The accepted messages to this number (as recorded), oldest first."""
        return [message for message in self.messages if message.mobile == mobile]

    def last_code(self, mobile: str) -> str | None:
        """The `#code#` of the latest accepted message to this number, if any."""
        messages = self.messages_to(mobile)
        return messages[-1].code if messages else None

    def reset(self) -> None:
        """Clears messages, faults, limit history and request counts; keeps the templates."""
        self.messages.clear()
        self._faults.clear()
        self._by_number.clear()
        self._by_content.clear()
        self.request_counts.clear()
        self.enforce_limits = self._initial_enforce_limits

    # -- the fake API --------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        app[SANDBOX_KEY] = self
        app.router.add_route("*", "/v2/{tail:.*}", self._handle_api)
        app.router.add_get("/sandbox/messages", self._get_messages)
        app.router.add_delete("/sandbox/messages", self._delete_messages)
        app.router.add_get("/sandbox/faults", self._get_faults)
        app.router.add_post("/sandbox/faults", self._post_fault)
        app.router.add_delete("/sandbox/faults", self._delete_faults)
        app.router.add_get("/sandbox/templates", self._get_templates)
        app.router.add_post("/sandbox/templates", self._post_template)
        app.router.add_get("/sandbox/limits", self._get_limits)
        app.router.add_post("/sandbox/limits", self._post_limits)
        app.router.add_post("/sandbox/reset", self._post_reset)
        app.router.add_get("/sandbox/stats", self._get_stats)
        app.router.add_get("/healthz", self._get_health)
        return app

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.request_counts[path] += 1
        if path not in API_PATHS:
            body = {"http_status_code": 404, "msg": "Not Found", "detail": f"no API at {path}"}
            return _json_response(body, status=HTTPStatus.NOT_FOUND)
        if request.method != "POST":
            return _ApiError(11).response()
        try:
            form = await request.post()
        except ValueError:
            return _ApiError(14, "请求体解码失败").response()
        mobile = _form_field(form, "mobile")
        fault = self._take_fault(path, mobile)
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(cast(float, fault.seconds))
            else:
                return _fault_response(request, fault, mobile)
        try:
            if not secrets.compare_digest(
                (_form_field(form, "apikey") or "").encode(), self._api_key
            ):
                raise _ApiError(-1)
            if path == SINGLE_SEND_PATH:
                return self._single_send(form)
            if path == TPL_GET_PATH:
                return self._tpl_get(form)
            return _json_response(_account())
        except _ApiError as error:
            return error.response()

    def _take_fault(self, path: str, mobile: str | None) -> Fault | None:
        for index, pending in enumerate(self._faults):
            if pending.fault.matches(path, mobile):
                pending.remaining -= 1
                if pending.remaining == 0:
                    del self._faults[index]
                return pending.fault
        return None

    def _single_send(self, form: Mapping[str, object]) -> web.Response:
        fields = {name: _form_field(form, name) for name in ("mobile", "text")}
        for name, value in fields.items():
            if value is None:
                raise _ApiError(1, f"参数 {name} 必须传入")
        raw_mobile, text = cast(str, fields["mobile"]), cast(str, fields["text"])
        recipient = _parse_mobile(raw_mobile)
        if recipient is None:
            raise _ApiError(2, f"参数 mobile 格式不正确，mobile:{raw_mobile}")
        match = self._match_template(text, recipient)
        now = self.clock()
        content_key = (recipient.mobile, match.delivered_text)
        if self.enforce_limits:
            for limit in PER_NUMBER_LIMITS:
                history = self._by_content if limit.same_content else self._by_number
                key = content_key if limit.same_content else recipient.mobile
                if history.refused(key, limit, now):
                    raise _ApiError(limit.code, mobile=recipient.mobile)
            self._by_number.record(recipient.mobile, now)
            self._by_content.record(content_key, now)
        sid = self._next_sid
        self._next_sid += 1
        self.messages.append(
            SentMessage(
                sid=sid,
                mobile=recipient.mobile,
                text=match.delivered_text,
                code=match.code,
                tpl_id=match.template.tpl_id,
                at=now,
            )
        )
        if len(self.messages) > MAX_RECORDED_MESSAGES:
            del self.messages[: len(self.messages) - MAX_RECORDED_MESSAGES]
        count = segment_count(match.delivered_text)
        return _json_response(
            {
                "code": 0,
                "msg": "发送成功",
                "count": count,
                "fee": float(FEE_PER_SEGMENT * count),
                "unit": FEE_UNIT,
                "mobile": recipient.mobile,
                "sid": sid,
            }
        )

    def _match_template(self, text: str, recipient: _Recipient) -> _Match:
        region_refused = False
        budget = MatchBudget()
        for template in self._templates.values():
            if template.check_status != "SUCCESS" or template.international != (
                recipient.region is not None
            ):
                continue
            try:
                match = _match_text(template, text, budget)
            except MatchBudgetError:
                _log.warning(
                    "Gave up matching a text after %d steps (template %d): its variables are "
                    "too ambiguous; answering code 5",
                    MAX_MATCH_STEPS,
                    template.tpl_id,
                )
                raise _ApiError(5) from None
            if match is None:
                continue
            if recipient.region is None or template.allows_region(recipient.region):
                return match
            region_refused = True
        if region_refused:
            raise _ApiError(23)
        raise _ApiError(5)

    def _tpl_get(self, form: Mapping[str, object]) -> web.Response:
        raw_id = _form_field(form, "tpl_id")
        if raw_id is None:
            return _json_response([t.to_json() for t in self._templates.values()])
        # Longer ids are no 64-bit id, and int() refuses (ValueError) past 4,300 digits.
        if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > MAX_TPL_ID_DIGITS:
            raise _ApiError(2, f"参数 tpl_id 格式不正确，tpl_id:{raw_id}")
        template = self._templates.get(int(raw_id))
        if template is None:
            raise _ApiError(5, f"参数 tpl_id 对应的模板不存在，tpl_id:{raw_id}")
        return _json_response(template.to_json())

    # -- control endpoints -------------------------------------------------------------------

    async def _get_messages(self, request: web.Request) -> web.Response:
        mobile = request.query.get("mobile")
        messages = self.messages if mobile is None else self.messages_to(mobile)
        return _json_response({"messages": [message.to_json() for message in messages]})

    async def _delete_messages(self, request: web.Request) -> web.Response:
        self.messages.clear()
        return _json_response({"messages": []})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json_response({"faults": [pending.to_json() for pending in self._faults]})

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_json(await _read_json(request))
            self.inject(fault)
        except SandboxInputError as error:
            return _control_error(str(error))
        return _json_response({"fault": fault.to_json(), "pending": len(self._faults)})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return _json_response({"faults": []})

    async def _get_templates(self, request: web.Request) -> web.Response:
        return _json_response({"templates": [t.to_json() for t in self._templates.values()]})

    async def _post_template(self, request: web.Request) -> web.Response:
        try:
            template = SandboxTemplate.from_json(await _read_json(request))
            self.add_template(template)
        except SandboxInputError as error:
            return _control_error(str(error))
        return _json_response({"template": template.to_json()})

    async def _get_limits(self, request: web.Request) -> web.Response:
        return _json_response({"enforce": self.enforce_limits})

    async def _post_limits(self, request: web.Request) -> web.Response:
        try:
            obj = _json_object(await _read_json(request), "limits")
            _reject_unknown_keys(obj, {"enforce"})
            enforce = obj.get("enforce")
            if not isinstance(enforce, bool):
                raise SandboxInputError("enforce must be true or false")
        except SandboxInputError as error:
            return _control_error(str(error))
        self.enforce_limits = enforce
        return _json_response({"enforce": enforce})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response({"reset": True})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                "requests": dict(self.request_counts),
                "messages": len(self.messages),
                "pending_faults": len(self._faults),
            }
        )

    async def _get_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


SANDBOX_KEY: Final = web.AppKey("sandbox", Sandbox)


def segment_count(delivered_text: str) -> int:
    """YunPian's billed segments for a text as delivered (signature included)."""
    length = len(delivered_text)
    return 1 if length <= SINGLE_SEGMENT_CHARS else math.ceil(length / MULTI_SEGMENT_CHARS)


def split_signature(content: str) -> tuple[str, str]:
    """Splits a leading 【signature】 from a text: ("【云片沙箱】", "body") or ("", content)."""
    found = _SIGNATURE.match(content)
    return (found.group(), content[found.end() :]) if found else ("", content)


@functools.lru_cache(maxsize=MAX_TEMPLATES)
def _template_pattern(body: str) -> TemplatePattern:
    return TemplatePattern.parse(body)


def _match_text(template: SandboxTemplate, text: str, budget: MatchBudget) -> _Match | None:
    """Matches a text sent without the signature, or with the template's own signature."""
    signature, body = split_signature(template.content)
    pattern = _template_pattern(body)
    if (values := pattern.fullmatch(text, 0, budget)) is not None:
        delivered = signature + text
    elif signature and text.startswith(signature):
        values = pattern.fullmatch(text, len(signature), budget)
        delivered = text
    if values is None:
        return None
    return _Match(template, delivered, values.get(CODE_VARIABLE))


def _parse_mobile(raw: str) -> _Recipient | None:
    """A mainland number (11 digits, no prefix) or a valid `+` E.164 number; None otherwise."""
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


def _account() -> JsonObject:
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


def _fault_response(request: web.Request, fault: Fault, mobile: str | None) -> web.Response:
    if fault.kind == "error":
        return _ApiError(cast(int, fault.code), fault.detail, mobile=mobile or "").response()
    if fault.kind == "http_status":
        status = cast(int, fault.status)
        try:
            title = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            title = f"{status} Error"
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return web.Response(status=status, text=page, content_type="text/html")
    if fault.kind == "malformed":
        if fault.body == "wrong_shape":
            return _json_response({"result": "ok"})
        # A body cut short: announced as JSON, but it does not parse.
        return web.Response(
            text='{"code":0,"msg":"发送成', content_type="application/json", charset="utf-8"
        )
    # "drop": the request was read; close the connection without a byte of answer. aiohttp then
    # fails to write the response below and quietly treats it as a client disconnect.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=444, reason="No Response")


def _json_response(body: object, status: int = HTTPStatus.OK) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
        charset="utf-8",
    )


def _control_error(message: str) -> web.Response:
    return _json_response({"error": message}, status=HTTPStatus.BAD_REQUEST)


async def _read_json(request: web.Request) -> object:
    try:
        return json.loads(await request.text())
    except ValueError as error:
        raise SandboxInputError(f"the body must be JSON: {error}") from None
    except RecursionError:  # "[[[[…": json gives up past the interpreter's recursion limit
        raise SandboxInputError("the body must be JSON nested less deeply") from None


def _json_object(data: object, what: str) -> JsonObject:
    if not isinstance(data, dict):
        raise SandboxInputError(f"a {what} must be a JSON object")
    return cast(JsonObject, data)


def _reject_unknown_keys(obj: JsonObject, known: set[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise SandboxInputError(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )


def _form_field(form: Mapping[str, object], name: str) -> str | None:
    """A form value, or None when it is missing, empty or not text."""
    value = form.get(name)
    return value if isinstance(value, str) and value else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _AccessLogger(AbstractAccessLogger):
    """Logs method, path and status only: never the query string, where a key could be."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class RunningSandbox:
    """A sandbox serving on a socket; `url` is its base URL (the API is at url + "/v2/...")."""

    def __init__(self, runner: web.AppRunner, url: str, sandbox: Sandbox) -> None:
        self._runner = runner
        self.url = url
        self.sandbox = sandbox
        self._closed = False

    async def close(self) -> None:
        """Stops serving; requests still in progress get `SHUTDOWN_TIMEOUT_S` to finish."""
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def start_sandbox(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> RunningSandbox:
    """Serves the sandbox on host:port (0 picks a free port) and returns where it listens.

    Raises ListenError when the address cannot be had.
    """
    runner = web.AppRunner(
        sandbox.app, access_log_class=_AccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    await start_tcp_site(runner, host, port, SANDBOX_LISTENER)
    bound_host, bound_port = runner.addresses[0][:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{url_host}:{bound_port}"
    _log.info("YunPian sandbox listening on %s", url)
    return RunningSandbox(runner, url, sandbox)

"""Fault injection: the misbehaviours a test queues, the requests they hit, and their answers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Literal, cast, get_args

from aiohttp import web

from yunpian_sms_server.sandbox.json_input import (
    JsonObject,
    SandboxInputError,
    is_int,
    is_number,
    json_object,
    reject_unknown_keys,
)
from yunpian_sms_server.sandbox.yunpian_wire import (
    API_PATHS,
    SINGLE_SEND_PATH,
    ApiError,
    json_response,
)

MAX_PENDING_FAULTS: Final = 1_000
MAX_FAULT_DELAY_S: Final = 600.0
# An error fault's own `detail` text: up to this long, to try how a caller copes with any answer.
MAX_FAULT_DETAIL_CHARS: Final = 100_000

FaultKind = Literal["error", "delay", "http_status", "malformed", "drop"]
FAULT_KINDS: Final[tuple[str, ...]] = get_args(FaultKind)
MalformedBody = Literal["not_json", "wrong_shape"]
MALFORMED_BODIES: Final[tuple[str, ...]] = get_args(MalformedBody)

# The one parameter each kind needs ("drop" needs none).
_FAULT_PARAMETERS: Final[Mapping[str, str]] = {
    "error": "code",
    "delay": "seconds",
    "http_status": "status",
    "malformed": "body",
}


@dataclass(frozen=True)
class Fault:
    """A misbehaviour the sandbox shows to the next `times` API requests that match it.

    kind "error" needs `code` (a non-zero YunPian code: that error, nothing recorded) and may
    set its `detail` text; "delay" `seconds` (sleep, then handle the request normally: it may
    still be accepted and recorded); "http_status" `status` (400-599: an nginx-like HTML page);
    "malformed" `body` ("not_json": HTTP 200 with truncated JSON, "wrong_shape": HTTP 200 with
    `{"result": "ok"}`); "drop" takes none (the request is read, then the connection is closed
    without an answer; nothing recorded, no report handed out). A fault matches POST requests
    to `path` (one of the API paths; default single_send) and, when `mobile` is set, only those
    whose `mobile` form value is exactly that (pull_status requests have none).
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
        if self.code is not None and (not is_int(self.code) or self.code == 0):
            raise SandboxInputError("code must be a non-zero integer (0 is success)")
        if self.seconds is not None and (
            not is_number(self.seconds) or not 0 <= self.seconds <= MAX_FAULT_DELAY_S
        ):
            raise SandboxInputError(f"seconds must be a number from 0 to {MAX_FAULT_DELAY_S:g}")
        if self.status is not None and (not is_int(self.status) or not 400 <= self.status <= 599):
            raise SandboxInputError("status must be an integer from 400 to 599")
        if self.body is not None and self.body not in MALFORMED_BODIES:
            raise SandboxInputError(f"body must be one of {', '.join(MALFORMED_BODIES)}")
        if not is_int(self.times) or self.times < 1:
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
        obj = json_object(data, "fault")
        reject_unknown_keys(
            obj, {"kind", "times", "path", "mobile", "detail", *_FAULT_PARAMETERS.values()}
        )
        if "kind" not in obj:
            raise SandboxInputError(f"kind is required, one of {', '.join(FAULT_KINDS)}")
        for name in ("code", "status", "times"):
            if name in obj and not is_int(obj[name]):
                raise SandboxInputError(f"{name} must be an integer")
        for name in ("kind", "body", "path", "mobile", "detail"):
            if name in obj and not isinstance(obj[name], str):
                raise SandboxInputError(f"{name} must be a string")
        if "seconds" in obj and not is_number(obj["seconds"]):
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


class PendingFaults:
    """The queued faults, first in first out, each with how many more requests it applies to."""

    def __init__(self) -> None:
        self._faults: list[_PendingFault] = []

    def __len__(self) -> int:
        return len(self._faults)

    def add(self, fault: Fault) -> None:
        """Queues a fault for the next `fault.times` API requests that match it."""
        if len(self._faults) >= MAX_PENDING_FAULTS:
            raise SandboxInputError(f"at most {MAX_PENDING_FAULTS} faults may be pending")
        self._faults.append(_PendingFault(fault, fault.times))

    def take(self, path: str, mobile: str | None) -> Fault | None:
        """The first pending fault that matches a request, used up once; None if none does."""
        for index, pending in enumerate(self._faults):
            if pending.fault.matches(path, mobile):
                pending.remaining -= 1
                if pending.remaining == 0:
                    del self._faults[index]
                return pending.fault
        return None

    def listed(self) -> list[tuple[Fault, int]]:
        """The queued faults with how many more requests each applies to."""
        return [(pending.fault, pending.remaining) for pending in self._faults]

    def clear(self) -> None:
        """Drops every pending fault."""
        self._faults.clear()


async def misbehave(
    request: web.Request, fault: Fault, form: Mapping[str, str]
) -> web.Response | None:
    """Shows a fault to a request: its answer, or None once a delay is over (handle it normally).

    `form` is the request's text form values. An error fault's own detail may quote them, as an
    answer that repeats the request would: `{mobile}`, `{text}` and `{apikey}` are replaced.
    """
    if fault.kind == "delay":
        await asyncio.sleep(cast(float, fault.seconds))
        return None
    if fault.kind == "error":
        detail = fault.detail
        if detail is not None:
            for name in ("mobile", "text", "apikey"):
                detail = detail.replace("{" + name + "}", form.get(name, ""))
        return ApiError(cast(int, fault.code), detail, mobile=form.get("mobile", "")).response()
    if fault.kind == "http_status":
        return _nginx_error_page(cast(int, fault.status))
    if fault.kind == "malformed":
        if fault.body == "wrong_shape":
            return json_response({"result": "ok"})
        # A body cut short: announced as JSON, but it does not parse.
        return web.Response(
            text='{"code":0,"msg":"发送成', content_type="application/json", charset="utf-8"
        )
    # "drop": the request was read; close the connection without a byte of answer. aiohttp then
    # fails to write the response below and quietly treats it as a client disconnect.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=444, reason="No Response")


def _nginx_error_page(status: int) -> web.Response:
    """The HTML page nginx answers with when the service behind it fails."""
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

"""The control API a test drives the sandbox with: `/sandbox/*` (messages, reports, faults, …)."""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from yunpian_sms_server.sandbox.account import Account
from yunpian_sms_server.sandbox.delivery_reports import ReportSettings
from yunpian_sms_server.sandbox.faults import Fault
from yunpian_sms_server.sandbox.json_input import (
    SandboxInputError,
    json_object,
    reject_unknown_keys,
)
from yunpian_sms_server.sandbox.templates import SandboxTemplate
from yunpian_sms_server.sandbox.yunpian_wire import json_response


class ControlApi:
    """The control endpoints of an account: JSON, no apikey.

    A bad body is HTTP 400 `{"error": "<what is wrong>"}`.

    * `GET /sandbox/messages[?mobile=M]`: `{"messages": [{"sid": "<decimal string>", "mobile",
      "text", "code", "tpl_id", "at", "uid", "callback_url"}]}`, oldest first (the last
      `MAX_RECORDED_MESSAGES` are kept); `DELETE /sandbox/messages` clears them.
    * `POST /sandbox/reports` with `{"delay_seconds", "failure_share", "fail_mobiles",
      "success_code", "failure_codes": [{"error_msg", "error_detail"}],
      "retry_interval_seconds", "push_timeout_seconds"}` sets how later messages are reported
      (ReportSettings; a key left out takes its default) and answers `{"settings": {...}}`;
      `GET /sandbox/reports` answers `{"settings", "pending": [report…], "stats"}`: the reports
      not yet pulled or pushed, by when they are available (each with the fields of
      pull_status, the sid a decimal string, `available_at` and `callback_url`), and
      ReportStats.
    * `POST /sandbox/faults` with a fault object (Fault.from_json) queues it (FIFO);
      `GET /sandbox/faults` lists pending ones with their `remaining` count; `DELETE
      /sandbox/faults` clears them. A fault is one of `{"kind": "error", "code": 22}`, `{"kind":
      "delay", "seconds": 2.5}`, `{"kind": "http_status", "status": 502}`, `{"kind":
      "malformed", "body": "not_json" | "wrong_shape"}`, `{"kind": "drop"}` (what each does:
      Fault). Optional keys: `"times": N` (default 1), `"path": "/v2/..."` (one of the API paths;
      default single_send), `"mobile": "..."` (only requests whose `mobile` form value
      is exactly that), `"detail"` (an error fault's own detail text; `{mobile}`, `{text}` and
      `{apikey}` in it quote the request's). Faults apply to POST requests only; a request
      consumes at most one fault, the first pending one that matches.
    * `POST /sandbox/templates` with `{"tpl_id", "tpl_content", "check_status", "reason",
      "country_code", "lang"}` adds or replaces a template; `GET /sandbox/templates` lists them.
    * `POST /sandbox/limits` with `{"enforce": true|false}` turns the per-number limits on or
      off; `GET /sandbox/limits` shows the setting.
    * `POST /sandbox/reset`: clears messages, reports (and their stats), faults, limit history
      and request counts and restores the limit and report settings; templates stay.
    * `GET /sandbox/stats`: `{"requests": {"<path>": count}, "messages": n, "pending_faults": n,
      "pending_reports": n}`.
    * `GET /healthz`: 200 `ok`.
    """

    def __init__(self, account: Account) -> None:
        self._account = account

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serves the control endpoints on an app's router."""
        router.add_get("/sandbox/messages", self._get_messages)
        router.add_delete("/sandbox/messages", self._delete_messages)
        router.add_get("/sandbox/reports", self._get_reports)
        router.add_post("/sandbox/reports", self._post_reports)
        router.add_get("/sandbox/faults", self._get_faults)
        router.add_post("/sandbox/faults", self._post_fault)
        router.add_delete("/sandbox/faults", self._delete_faults)
        router.add_get("/sandbox/templates", self._get_templates)
        router.add_post("/sandbox/templates", self._post_template)
        router.add_get("/sandbox/limits", self._get_limits)
        router.add_post("/sandbox/limits", self._post_limits)
        router.add_post("/sandbox/reset", self._post_reset)
        router.add_get("/sandbox/stats", self._get_stats)
        router.add_get("/healthz", self._get_health)

    async def _get_messages(self, request: web.Request) -> web.Response:
        mobile = request.query.get("mobile")
        account = self._account
        messages = account.messages if mobile is None else account.messages_to(mobile)
        return json_response({"messages": [message.to_json() for message in messages]})

    async def _delete_messages(self, request: web.Request) -> web.Response:
        self._account.messages.clear()
        return json_response({"messages": []})

    async def _get_reports(self, request: web.Request) -> web.Response:
        account = self._account
        return json_response(
            {
                "settings": account.report_settings.to_json(),
                "pending": [report.to_json() for report in account.pending_reports],
                "stats": account.report_stats.to_json(),
            }
        )

    async def _post_reports(self, request: web.Request) -> web.Response:
        try:
            settings = self._account.configure_reports(
                ReportSettings.from_json(await _read_json(request))
            )
        except SandboxInputError as error:
            return _control_error(str(error))
        return json_response({"settings": settings.to_json()})

    async def _get_faults(self, request: web.Request) -> web.Response:
        pending = [
            {**fault.to_json(), "remaining": remaining}
            for fault, remaining in self._account.pending_faults
        ]
        return json_response({"faults": pending})

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_json(await _read_json(request))
            self._account.inject(fault)
        except SandboxInputError as error:
            return _control_error(str(error))
        return json_response({"fault": fault.to_json(), "pending": self._pending_count()})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self._account.clear_faults()
        return json_response({"faults": []})

    async def _get_templates(self, request: web.Request) -> web.Response:
        return json_response({"templates": [t.to_json() for t in self._account.templates]})

    async def _post_template(self, request: web.Request) -> web.Response:
        try:
            template = SandboxTemplate.from_json(await _read_json(request))
            self._account.add_template(template)
        except SandboxInputError as error:
            return _control_error(str(error))
        return json_response({"template": template.to_json()})

    async def _get_limits(self, request: web.Request) -> web.Response:
        return json_response({"enforce": self._account.enforce_limits})

    async def _post_limits(self, request: web.Request) -> web.Response:
        try:
            obj = json_object(await _read_json(request), "limits")
            reject_unknown_keys(obj, {"enforce"})
            enforce = obj.get("enforce")
            if not isinstance(enforce, bool):
                raise SandboxInputError("enforce must be true or false")
        except SandboxInputError as error:
            return _control_error(str(error))
        self._account.enforce_limits = enforce
        return json_response({"enforce": enforce})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self._account.reset()
        return json_response({"reset": True})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "requests": dict(self._account.request_counts),
                "messages": len(self._account.messages),
                "pending_faults": self._pending_count(),
                "pending_reports": self._account.reports.count(self._account.clock()),
            }
        )

    async def _get_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _pending_count(self) -> int:
        return len(self._account.pending_faults)


def _control_error(message: str) -> web.Response:
    return json_response({"error": message}, status=HTTPStatus.BAD_REQUEST)


async def _read_json(request: web.Request) -> object:
    try:
        return json.loads(await request.text())
    except ValueError as error:
        raise SandboxInputError(f"the body must be JSON: {error}") from None
    except RecursionError:  # "[[[[…": json gives up past the interpreter's recursion limit
        raise SandboxInputError("the body must be JSON nested less deeply") from None

"""The HTTP endpoint YunPian pushes delivery reports to (`[delivery] mode = "push"`).

YunPian POSTs a form with one field, `sms_status`: a URL-encoded JSON array of up to 100 reports.
It signs nothing, so the path carries a secret token; any other path is 404. The answer is the
plain text `SUCCESS` only once the reports are saved; anything else makes YunPian push again
(3 times), so a store failure answers 503. A body that is not a report batch is 400 with a log
line, and nothing of it is saved.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

import structlog
from aiohttp import web

from yunpian_sms_server.delivery_reports import DeliveryReports
from yunpian_sms_server.delivery_state import ReportFormatError, decode_pushed_reports
from yunpian_sms_server.listen_addresses import parse_listen
from yunpian_sms_server.listeners import start_tcp_site
from yunpian_sms_server.stores import StoreUnavailableError

REPORT_PATH: Final = "/yunpian/reports/"
# 100 reports, URL-encoded twice, are well under this; a larger body is not YunPian's.
MAX_BODY_BYTES: Final = 256 * 1024
REPORTS_LISTENER: Final = "delivery reports"
ACCEPTED: Final = "SUCCESS"

_log = structlog.get_logger("yunpian_sms.delivery")


def callback_url(public_url: str, token: str) -> str:
    """The URL a send names for its report: the public base, the report path, the token."""
    return public_url.rstrip("/") + REPORT_PATH + token


async def start_report_endpoint(
    reports: DeliveryReports,
    token: str,
    listen: str,
    on_push: Callable[[str], None] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serves the endpoint on HOST:PORT; returns its runner (to clean up) and port.

    `on_push` is called with each push's result: saved, rejected, store_error, wrong_path.
    """
    count = on_push or (lambda _result: None)

    async def receive(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.match_info["token"].encode(), token.encode()):
            count("wrong_path")
            _log.warning("report_push_refused", why="the path's token is not this server's")
            raise web.HTTPNotFound()
        try:
            form = await request.post()
            sms_status = form.get("sms_status")
            if not isinstance(sms_status, str):
                raise ReportFormatError("the form has no sms_status field")
            pushed = decode_pushed_reports(sms_status)
        except (ReportFormatError, ValueError, web.HTTPRequestEntityTooLarge) as error:
            count("rejected")
            why = "the body is too large" if isinstance(error, web.HTTPException) else str(error)
            _log.warning("report_push_rejected", why=why)
            return web.Response(status=HTTPStatus.BAD_REQUEST, text=why)
        try:
            await reports.save(pushed)
        except StoreUnavailableError as error:
            count("store_error")
            _log.warning("report_save_failed", error=str(error), count=len(pushed))
            return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text="not saved")
        count("saved")
        return web.Response(text=ACCEPTED)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(REPORT_PATH + "{token}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_listen(listen)
    await start_tcp_site(runner, host, port, REPORTS_LISTENER)
    return runner, int(runner.addresses[0][1])

"""Serving the sandbox: its aiohttp app (with the report push task), the access log, and
start_sandbox's RunningSandbox."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from yunpian_sms_server.sandbox.account import Account
from yunpian_sms_server.sandbox.control_api import ControlApi
from yunpian_sms_server.sandbox.fake_api import FakeYunpianApi
from yunpian_sms_server.sandbox.report_push import ReportPusher

# How long closing a running sandbox waits for requests in progress (e.g. a delay fault).
SHUTDOWN_TIMEOUT_S: Final = 1.0

_log = logging.getLogger(__name__)


class Sandbox(Account):
    """The fake YunPian account, served: `app` answers the YunPian API and the control API."""

    @functools.cached_property
    def app(self) -> web.Application:
        """The aiohttp app of this sandbox: `/v2/…` (FakeYunpianApi), `/sandbox/…` (ControlApi).

        While the app runs, a task pushes due delivery reports (ReportPusher); its cleanup
        stops the task and the pushes in flight.
        """
        app = web.Application()
        app[SANDBOX_KEY] = self
        app.router.add_route("*", "/v2/{tail:.*}", FakeYunpianApi(self).handle)
        ControlApi(self).add_routes(app.router)
        app.cleanup_ctx.append(self._push_reports)
        return app

    async def _push_reports(self, app: web.Application) -> AsyncIterator[None]:
        pusher = ReportPusher(self)
        pusher.start()
        try:
            yield
        finally:
            await pusher.close()


# Where a handler of the app finds its sandbox.
SANDBOX_KEY: Final = web.AppKey("sandbox", Sandbox)


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
        """Stops serving; requests still in progress get `SHUTDOWN_TIMEOUT_S` to finish; the
        report push task and its pushes in flight stop (their reports stay pending)."""
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

    Raises OSError when the address cannot be had (a port in use, a host not this machine's):
    the caller words it as it words its other listeners' failures.
    """
    runner = web.AppRunner(
        sandbox.app, access_log_class=_AccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{url_host}:{bound_port}"
    _log.info("YunPian sandbox listening on %s", url)
    return RunningSandbox(runner, url, sandbox)

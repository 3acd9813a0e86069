"""A minimal fake of YunPian's `POST /v2/sms/single_send.json`: always accepts, after a delay.

Run: `python bench/upstream.py --delay-ms 100`. Prints `{"port": N}` on stdout once it listens.
It answers the documented success JSON (YunPian's single_send.json), echoing the form's `mobile`; it
checks nothing else, so every server under test gets the same cheap, predictable upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from typing import Final

from aiohttp import web

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
# Sids above 2**53, as the sandbox hands out, so an inexact parse would show.
FIRST_SID: Final = 2**53 + 1000
SUCCESS_MSG: Final = "发送成功"
FEE: Final = 0.05
FEE_UNIT: Final = "RMB"
# The largest single-request backlog the fake needs: the benchmark's highest concurrency, twice.
LISTEN_BACKLOG: Final = 1024


def make_app(delay_s: float) -> web.Application:
    """The fake's application: one route."""
    sids = itertools.count(FIRST_SID)

    async def single_send(request: web.Request) -> web.Response:
        form = await request.post()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        answer = {
            "code": 0,
            "msg": SUCCESS_MSG,
            "count": 1,
            "fee": FEE,
            "unit": FEE_UNIT,
            "mobile": str(form.get("mobile", "")),
            "sid": next(sids),
        }
        return web.Response(
            body=json.dumps(answer, ensure_ascii=False).encode(),
            content_type="application/json",
            charset="utf-8",
        )

    app = web.Application()
    app.router.add_post(SINGLE_SEND_PATH, single_send)
    return app


async def serve(host: str, port: int, delay_s: float) -> None:
    """Serves until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(delay_s), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer after this long")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())

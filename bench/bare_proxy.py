"""The reference the real server is measured against: grpc.aio + one aiohttp POST per RPC.

Run: `python bench/bare_proxy.py --upstream http://127.0.0.1:PORT`. Prints `{"port": N}` once
SERVING. No validation, no phone parsing, no logs, no interceptors: the least a Python service
can do to turn a SendCode into a YunPian call, so the ratio to it is the price of our features.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any, Final

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
API_KEY: Final = "0123456789abcdef0123456789abcdef"
TEXT_BEFORE_CODE: Final = "您的验证码是"
TEXT_AFTER_CODE: Final = "。如非本人操作，请忽略本短信"
TIMEOUT_S: Final = 5.0


class BareSmsServicer(pb_grpc.SmsServiceServicer):
    """SendCode as one POST to the upstream; its JSON copied into the response."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def SendCode(  # noqa: N802 - the proto's RPC name
        self, request: pb.SendCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendCodeResponse:
        form = {
            "apikey": API_KEY,
            "mobile": request.phone_number,
            "text": TEXT_BEFORE_CODE + request.code + TEXT_AFTER_CODE,
        }
        async with self._session.post(self._url, data=form) as response:
            answer = json.loads(await response.read())
        return pb.SendCodeResponse(
            message_id=str(answer["sid"]),
            mobile=answer["mobile"],
            segment_count=answer["count"],
            fee=str(answer["fee"]),
            fee_unit=answer["unit"],
        )

    async def _not_benchmarked(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Not part of the benchmark.")

    # The proto's other RPCs: the reference serves SendCode only.
    ValidateTemplate = StartVerification = CheckVerification = _not_benchmarked
    CancelVerification = GetDeliveryStatus = _not_benchmarked


async def serve(listen: str, upstream: str) -> None:
    """Serves until SIGTERM or SIGINT."""
    # No connection cap (limit=0): the reference is limited by nothing but its own cost.
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), connector=aiohttp.TCPConnector(limit=0)
    )
    server = grpc.aio.server()
    pb_grpc.add_SmsServiceServicer_to_server(
        BareSmsServicer(session, upstream.rstrip("/") + SINGLE_SEND_PATH), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True, help="base URL of the fake YunPian")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What most teams would write: a thread-pool gRPC server that calls YunPian with `requests`.

Run: `python bench/threadpool_server.py --upstream http://127.0.0.1:PORT`. Prints `{"port": N}`
once SERVING. Ten worker threads, as in grpc's own examples; each RPC blocks its thread on one
`requests.post`, so at most ten calls reach the upstream at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures
from types import FrameType
from typing import Any, Final

import grpc
import requests
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
API_KEY: Final = "0123456789abcdef0123456789abcdef"
TEXT_BEFORE_CODE: Final = "您的验证码是"
TEXT_AFTER_CODE: Final = "。如非本人操作，请忽略本短信"
TIMEOUT_S: Final = 5.0
# grpc's examples (helloworld, route_guide) use this many workers.
DEFAULT_WORKERS: Final = 10
# How often the main thread looks for a stop signal.
STOP_POLL_S: Final = 0.2


class ThreadPoolSmsServicer(pb_grpc.SmsServiceServicer):
    """SendCode as one blocking `requests.post` to the upstream."""

    def __init__(self, url: str) -> None:
        self._url = url

    def SendCode(  # noqa: N802 - the proto's RPC name
        self, request: pb.SendCodeRequest, context: grpc.ServicerContext
    ) -> pb.SendCodeResponse:
        form = {
            "apikey": API_KEY,
            "mobile": request.phone_number,
            "text": TEXT_BEFORE_CODE + request.code + TEXT_AFTER_CODE,
        }
        answer: dict[str, Any] = requests.post(self._url, data=form, timeout=TIMEOUT_S).json()
        return pb.SendCodeResponse(
            message_id=str(answer["sid"]),
            mobile=answer["mobile"],
            segment_count=answer["count"],
            fee=str(answer["fee"]),
            fee_unit=answer["unit"],
        )

    def _not_benchmarked(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Not part of the benchmark.")

    # The proto's other RPCs: the reference serves SendCode only.
    ValidateTemplate = StartVerification = CheckVerification = _not_benchmarked
    CancelVerification = GetDeliveryStatus = _not_benchmarked


def serve(listen: str, upstream: str, workers: int) -> None:
    """Serves until SIGTERM or SIGINT."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_SmsServiceServicer_to_server(
        ThreadPoolSmsServicer(upstream.rstrip("/") + SINGLE_SEND_PATH), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(json.dumps({"port": port}), flush=True)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.wait(STOP_POLL_S):
        pass
    server.stop(1.0).wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True, help="base URL of the fake YunPian")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args()
    serve(args.listen, args.upstream, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

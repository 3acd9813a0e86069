"""The servers under test (real server, bare proxy, thread-pool server) and the fake YunPian they
call: how each is started in this run, and what a started one is."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import HOST, READY_TIMEOUT_S, Processes, free_port
from progress import BenchError
from real_server_config import (
    MEMORY_STORE,
    PRODUCTION_IDEMPOTENCY_TTL_S,
    production_features,
    real_server_keys,
    write_config,
)

BIN_DIR: Final = Path(sys.executable).parent
SERVING_POLL_S: Final = 0.005
HEALTH_CHECK_TIMEOUT_S: Final = 0.5
METRICS_PROBE_TIMEOUT_S: Final = 1.0
HTTP_OK: Final = 200


@dataclass(frozen=True, slots=True)
class Upstream:
    """A running fake YunPian."""

    url: str
    pid: int
    delay_ms: float


@dataclass(frozen=True, slots=True)
class Server:
    """A server under test: its process, gRPC port and upstream."""

    name: str
    process: subprocess.Popen[str]
    port: int
    upstream: Upstream

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True, slots=True)
class RealServer(Server):
    """The real server, with what its start revealed."""

    startup_s: float
    log_path: Path
    metrics_listen: str

    def metrics_serving(self) -> bool:
        """Whether its Prometheus endpoint answers."""
        try:
            with urllib.request.urlopen(
                f"http://{self.metrics_listen}/metrics", timeout=METRICS_PROBE_TIMEOUT_S
            ) as answer:
                return bool(answer.status == HTTP_OK)
        except OSError:
            return False

    def rpc_events(self) -> int:
        """The `rpc` events in its JSON log so far."""
        count = 0
        with open(self.log_path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    count += isinstance(event, dict) and event.get("event") == "rpc"
        return count


def health_status(target: str) -> int | None:
    """The server's overall grpc.health.v1 status, None while it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            # types-grpcio-health-checking declares HealthStub without its methods.
            answer = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_CHECK_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
    status: int = answer.status
    return status


def wait_serving(process: subprocess.Popen[str], port: int, started: float) -> float:
    """Seconds from `started` until health Check says SERVING; fails if the process exits."""
    target = f"{HOST}:{port}"
    while (elapsed := time.perf_counter() - started) < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), SERVING_POLL_S):
            if health_status(target) == health_pb2.HealthCheckResponse.SERVING:
                return time.perf_counter() - started
        time.sleep(SERVING_POLL_S)
    raise BenchError(f"the server was not SERVING after {elapsed:.1f} s")


class Servers:
    """Starts the servers and upstreams of one run, each a process named for its kind and order
    ("real-2"): its stderr, log and config in the work directory carry that name."""

    def __init__(self, processes: Processes, per_phone_limits: Sequence[str]) -> None:
        self._processes = processes
        self._per_phone_limits = list(per_phone_limits)
        self._names: dict[str, int] = {}
        # The production features of the last real server's config (the report lists them).
        self.features: dict[str, bool] = {}

    def _name(self, base: str) -> str:
        self._names[base] = self._names.get(base, 0) + 1
        return f"{base}-{self._names[base]}"

    def start_upstream(self, delay_ms: float) -> Upstream:
        name = self._name(f"upstream-{delay_ms:g}ms")
        process, port = self._processes.spawn_reporting_port(
            name, [sys.executable, "upstream.py", "--delay-ms", str(delay_ms)]
        )
        return Upstream(f"http://{HOST}:{port}", process.pid, delay_ms)

    def start_bare(self, upstream: Upstream) -> Server:
        name = self._name("bare")
        process, port = self._processes.spawn_reporting_port(
            name, [sys.executable, "bare_proxy.py", "--upstream", upstream.url]
        )
        return Server("bare", process, port, upstream)

    def start_threadpool(self, upstream: Upstream, workers: int) -> Server:
        name = self._name("threadpool")
        argv = [sys.executable, "threadpool_server.py", "--upstream", upstream.url]
        argv += ["--workers", str(workers)]
        process, port = self._processes.spawn_reporting_port(name, argv)
        return Server("threadpool", process, port, upstream)

    def start_real(
        self,
        upstream: Upstream,
        *,
        state_s: int | None = None,
        label: str = "real",
        store_url: str = MEMORY_STORE,
        verify: bool = False,
    ) -> RealServer:
        """`yunpian-sms serve --config FILE`, timed from spawn to SERVING.

        `state_s` keeps idempotency records and per-phone logs that many seconds, not a day.
        `label` names it in the figures; `store_url` and `verify` as `production_features`.
        """
        name = self._name("real")
        port, metrics_port = free_port(), free_port()
        metrics_listen = f"{HOST}:{metrics_port}"
        per_phone, ttl_s = self._per_phone_limits, PRODUCTION_IDEMPOTENCY_TTL_S
        if state_s is not None:
            per_phone, ttl_s = [f"1/{state_s}s"], state_s
        features = production_features(
            metrics_listen=metrics_listen,
            per_phone=per_phone,
            idempotency_ttl_s=ttl_s,
            store_url=store_url,
            verify=verify,
        )
        keys = real_server_keys(
            listen=f"{HOST}:{port}", upstream_url=upstream.url, features=features
        )
        config_path = self._processes.workdir / f"{name}.toml"
        write_config(config_path, keys, self._processes.env)
        self.features = dict.fromkeys(features, True)
        log_path = self._processes.workdir / f"{name}.log"
        argv = [str(BIN_DIR / "yunpian-sms"), "serve", "--config", str(config_path)]
        with open(log_path, "w", encoding="utf-8") as log_file:
            started = time.perf_counter()
            process = self._processes.spawn(name, argv, stdout=log_file)
        try:
            startup_s = wait_serving(process, port, started)
        except BenchError as error:
            raise BenchError(f"{name}: {error}: {self._processes.stderr_tail(name)}") from None
        return RealServer(
            label,
            process,
            port,
            upstream,
            startup_s=startup_s,
            log_path=log_path,
            metrics_listen=metrics_listen,
        )

    def stop(self, server: Server) -> None:
        self._processes.stop(server.process)

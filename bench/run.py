"""The yunpian-sms benchmark (issue 6): one command, every figure as JSON on stdout.

    .venv/bin/python bench/run.py            # the full run, a few minutes
    .venv/bin/python bench/run.py --smoke    # every scenario, tiny sizes, seconds

In one run it starts a fake YunPian (`upstream.py`, with a delay), the real server the production
way (`yunpian-sms serve --config <generated toml>`, JSON logs to a file), the bare reference
proxy (`bare_proxy.py`), the thread-pool server (`threadpool_server.py`, 100 ms case only) and the
load generator (`loadgen.py`), each a separate process on loopback, and measures: calls/s,
p50/p90/p99 latency, server CPU seconds per 1,000 calls, peak RSS, the ratios to the bare proxy,
start-up to SERVING, and RSS growth over a long run. The issue's targets are judged at the end.
Progress goes to stderr; only the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proc_stats import peak_rss_mb

BENCH_DIR: Final = Path(__file__).resolve().parent
BIN_DIR: Final = Path(sys.executable).parent
HOST: Final = "127.0.0.1"
API_KEY: Final = "0123456789abcdef0123456789abcdef"
TEMPLATE: Final = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
REQUIRED_USAGE_TYPES: Final = ("SignIn", "Register", "ForgotPassword", "Generic")
# Distinct valid mainland mobiles: 13800000000, 13800000001, ... (one per call of the run).
FIRST_PHONE: Final = 13_800_000_000
# The production defaults: every call has its own number, so they never refuse.
PRODUCTION_PER_PHONE_LIMITS: Final = ("1/60s", "5/1h", "10/1d")
PRODUCTION_IDEMPOTENCY_TTL_S: Final = 86400
# The memory scenario's leak check keeps every call's state (idempotency record, per-phone log)
# this long instead of a day, so the state turns over during the run and what remains is leaks.
LEAK_CHECK_STATE_S: Final = 2
# Far above what this machine can do, over windows short enough to hold little state.
HIGH_RATE_LIMITS: Final = ("100000/1s",)
SERVER_GRACE_S: Final = 1.0
UPSTREAM_TIMEOUT_S: Final = 5.0
# Bounds on waiting for a process: to print its port, to be SERVING, to exit.
READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
SERVING_POLL_S: Final = 0.005
HEALTH_CHECK_TIMEOUT_S: Final = 0.5
METRICS_PROBE_TIMEOUT_S: Final = 1.0
# One job's calls stop after this long whatever their count; the job's result then says so.
JOB_MAX_SECONDS: Final = 120.0
# How long the runner waits for the load generator's answer beyond the job's own bound.
JOB_ANSWER_SLACK_S: Final = 60.0
CALL_TIMEOUT_S: Final = 30.0
# The machine is shared (2 cores): a measurement waits this long at most for it to be idle.
DEFAULT_QUIET_WAIT_S: Final = 20.0
# Targets of issue 6.
TARGET_THROUGHPUT_RATIO: Final = 0.9
TARGET_P50_EXTRA_MS: Final = 0.3
TARGET_VS_THREADPOOL: Final = 20.0
TARGET_PEAK_RSS_MB: Final = 120.0
TARGET_GROWTH_MB: Final = 5.0
TARGET_STARTUP_S: Final = 1.0
MS_PER_S: Final = 1000.0
HTTP_OK: Final = 200
# The caller the real server knows the load generator as, when the server has [auth].
BENCH_CALLER: Final = "bench"
BENCH_TOKEN: Final = "bench-token-not-a-secret"  # noqa: S105 - a loopback test caller
AUTH_FEATURE: Final = f"auth.callers.{BENCH_CALLER}.token_sha256"
# zero: upstream 0 ms at C=64 and C=1; slow: the slow upstream at C=256.
SCENARIOS: Final = ("zero", "slow", "memory", "startup")


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many calls each scenario makes; `rounds` alternates the servers to even out drift."""

    c64_calls: int
    c64_warmup: int
    c1_calls: int
    c1_warmup: int
    c256_calls: int
    c256_warmup: int
    threadpool_calls: int
    threadpool_warmup: int
    memory_calls: int
    rounds: int
    startup_runs: int


FULL: Final = Sizes(
    c64_calls=10_000,
    c64_warmup=1_000,
    c1_calls=2_000,
    c1_warmup=200,
    c256_calls=256 * 20,
    c256_warmup=512,
    threadpool_calls=600,
    threadpool_warmup=20,
    memory_calls=50_000,
    rounds=3,
    startup_runs=3,
)
SMOKE: Final = Sizes(
    c64_calls=200,
    c64_warmup=20,
    c1_calls=20,
    c1_warmup=5,
    c256_calls=256,
    c256_warmup=0,
    threadpool_calls=20,
    threadpool_warmup=0,
    memory_calls=400,
    rounds=1,
    startup_runs=0,
)


class BenchError(Exception):
    """A process failed or a measurement could not be made."""


def log(message: str) -> None:
    """Progress, on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port free right now (the real server is told its port in its config)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _read_line(stream: IO[str], timeout_s: float, what: str) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise BenchError(f"{what}: no answer within {timeout_s:g} s")
    line = stream.readline()
    if not line:
        raise BenchError(f"{what}: the process closed its output")
    return line


_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the run dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every process the run starts; all of them are stopped when the run ends (or dies)."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self._started: list[subprocess.Popen[str]] = []

    def spawn(
        self, name: str, argv: Sequence[str], *, stdout: IO[str] | int, stdin: int | None = None
    ) -> subprocess.Popen[str]:
        with open(self.workdir / f"{name}.stderr", "w", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                text=True,
                cwd=BENCH_DIR,
                preexec_fn=_die_with_parent,
            )
        self._started.append(process)
        return process

    def spawn_reporting_port(
        self, name: str, argv: Sequence[str]
    ) -> tuple[subprocess.Popen[str], int]:
        """Starts a bench process that prints `{"port": N}` once it serves."""
        process = self.spawn(name, argv, stdout=subprocess.PIPE)
        assert process.stdout is not None
        try:
            line = _read_line(process.stdout, READY_TIMEOUT_S, name)
        except BenchError:
            raise BenchError(f"{name} did not start: {self.stderr_tail(name)}") from None
        return process, int(json.loads(line)["port"])

    def stderr_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.stderr"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return text.strip()[-2000:] or "(nothing on stderr)"

    def stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for process in reversed(self._started):
            self.stop(process)


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

    startup_s: float = 0.0
    log_path: Path = Path()
    metrics_listen: str = ""


def health_status(target: str) -> int | None:
    """The server's overall grpc.health.v1 status, None while it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
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


def _set_key(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    trial = copy.deepcopy(data)
    *tables, key = dotted.split(".")
    table = trial
    for name in tables:
        table = table.setdefault(name, {})
    table[key] = value
    return trial


def build_config(
    listen: str,
    base_url: str,
    metrics_listen: str,
    per_phone: Sequence[str],
    idempotency_ttl_s: float = PRODUCTION_IDEMPOTENCY_TTL_S,
) -> tuple[dict[str, Any], dict[str, bool]]:
    """The real server's config: production settings, each kept only if the parser accepts it.

    Other engineers add features (limits, idempotency, metrics, ...) while this benchmark stays
    as it is, so every optional key is tried against `parse_config` and dropped if refused.
    """
    from yunpian_sms_server.config import (
        ConfigError,
        parse_config,  # the installed server's own parser
    )

    data: dict[str, Any] = {
        "server": {"listen": listen, "grace_period_seconds": SERVER_GRACE_S},
        "yunpian": {
            "api_key": API_KEY,
            "base_url": base_url,
            "timeout_seconds": UPSTREAM_TIMEOUT_S,
        },
        "templates": dict.fromkeys(REQUIRED_USAGE_TYPES, TEMPLATE),
    }
    parse_config(data, {})  # the base must be valid: a failure here is the benchmark's bug
    candidates: tuple[tuple[str, object], ...] = (
        ("server.metrics_listen", metrics_listen),
        ("limits.per_phone", list(per_phone)),
        ("limits.per_caller", list(HIGH_RATE_LIMITS)),
        ("limits.global", list(HIGH_RATE_LIMITS)),
        ("store.url", "memory://"),
        ("store.on_error", "deny"),
        ("store.idempotency_ttl_seconds", idempotency_ttl_s),
        # Production callers authenticate: the load generator sends this caller's token.
        (
            f"auth.callers.{BENCH_CALLER}.token_sha256",
            hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(),
        ),
    )
    features: dict[str, bool] = {}
    for dotted, value in candidates:
        trial = _set_key(data, dotted, value)
        try:
            parse_config(trial, {})
        except ConfigError:
            features[dotted] = False
        else:
            data, features[dotted] = trial, True
    return data, features


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text of nested tables of scalars and lists (all the config needs)."""
    lines: list[str] = []
    for name, values in data.items():
        table = f"{prefix}{name}"
        scalars = {key: value for key, value in values.items() if not isinstance(value, dict)}
        nested = {key: value for key, value in values.items() if isinstance(value, dict)}
        if scalars or not nested:
            lines.append(f"[{table}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
            lines.append("")
        if nested:
            lines.append(to_toml(nested, f"{table}."))
    return "\n".join(lines)


def probe_metrics(metrics_listen: str) -> bool:
    """Whether a Prometheus endpoint answers on `metrics_listen`."""
    if not metrics_listen:
        return False
    try:
        with urllib.request.urlopen(
            f"http://{metrics_listen}/metrics", timeout=METRICS_PROBE_TIMEOUT_S
        ) as answer:
            return bool(answer.status == HTTP_OK)
    except OSError:
        return False


def count_rpc_events(log_path: Path) -> int:
    """The `rpc` events in a server's JSON log."""
    count = 0
    with open(log_path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                count += isinstance(event, dict) and event.get("event") == "rpc"
    return count


class Bench:
    """One benchmark run: the processes, the phone numbers handed out, the configs' features."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        env = {key: value for key, value in os.environ.items() if not key.startswith("YUNPIAN_")}
        self.procs = Processes(workdir, env)
        self._next_phone = FIRST_PHONE
        self._names: dict[str, int] = {}
        self.features: dict[str, bool] = {}
        self.loadgen = self.procs.spawn(
            "loadgen",
            [sys.executable, str(BENCH_DIR / "loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _name(self, base: str) -> str:
        self._names[base] = self._names.get(base, 0) + 1
        return f"{base}-{self._names[base]}"

    def start_upstream(self, delay_ms: float) -> Upstream:
        name = self._name(f"upstream-{delay_ms:g}ms")
        process, port = self.procs.spawn_reporting_port(
            name, [sys.executable, "upstream.py", "--delay-ms", str(delay_ms)]
        )
        return Upstream(f"http://{HOST}:{port}", process.pid, delay_ms)

    def start_bare(self, upstream: Upstream) -> Server:
        name = self._name("bare")
        process, port = self.procs.spawn_reporting_port(
            name, [sys.executable, "bare_proxy.py", "--upstream", upstream.url]
        )
        return Server("bare", process, port, upstream)

    def start_threadpool(self, upstream: Upstream) -> Server:
        name = self._name("threadpool")
        argv = [sys.executable, "threadpool_server.py", "--upstream", upstream.url]
        argv += ["--workers", str(self.args.threadpool_workers)]
        process, port = self.procs.spawn_reporting_port(name, argv)
        return Server("threadpool", process, port, upstream)

    def start_real(self, upstream: Upstream, *, state_s: int | None = None) -> RealServer:
        """`yunpian-sms serve --config FILE`, timed from spawn to SERVING.

        `state_s` keeps idempotency records and per-phone logs that many seconds, not a day.
        """
        name = self._name("real")
        port, metrics_port = free_port(), free_port()
        metrics_listen = f"{HOST}:{metrics_port}"
        per_phone, ttl_s = self.args.per_phone_limits, PRODUCTION_IDEMPOTENCY_TTL_S
        if state_s is not None:
            per_phone, ttl_s = [f"1/{state_s}s"], state_s
        data, self.features = build_config(
            f"{HOST}:{port}", upstream.url, metrics_listen, per_phone, ttl_s
        )
        config_path = self.workdir / f"{name}.toml"
        config_path.write_text(to_toml(data), encoding="utf-8")
        log_path = self.workdir / f"{name}.log"
        argv = [str(BIN_DIR / "yunpian-sms"), "serve", "--config", str(config_path)]
        with open(log_path, "w", encoding="utf-8") as log_file:
            started = time.perf_counter()
            process = self.procs.spawn(name, argv, stdout=log_file)
        try:
            startup_s = wait_serving(process, port, started)
        except BenchError as error:
            raise BenchError(f"{name}: {error}: {self.procs.stderr_tail(name)}") from None
        return RealServer(
            "real",
            process,
            port,
            upstream,
            startup_s=startup_s,
            log_path=log_path,
            metrics_listen=metrics_listen if data["server"].get("metrics_listen") else "",
        )

    def run_job(
        self, server: Server, *, calls: int, concurrency: int, warmup: int = 0, rate: float = 0.0
    ) -> dict[str, Any]:
        """Runs one load-generator job against `server`; fails on any failed call."""
        job = {
            "target": server.target,
            "calls": calls,
            "concurrency": concurrency,
            "warmup": warmup,
            "phone_start": self._next_phone,
            "server_pid": server.pid,
            "upstream_pid": server.upstream.pid,
            "max_seconds": JOB_MAX_SECONDS,
            "timeout_s": CALL_TIMEOUT_S,
            "request_ids": self.args.request_ids,
            "quiet_wait_s": self.args.quiet_wait_s,
            "rate": rate,
            "token": BENCH_TOKEN if self.features.get(AUTH_FEATURE) else "",
        }
        self._next_phone += warmup + calls
        assert self.loadgen.stdin is not None
        assert self.loadgen.stdout is not None
        self.loadgen.stdin.write(json.dumps(job) + "\n")
        self.loadgen.stdin.flush()
        answer: dict[str, Any] = json.loads(
            _read_line(self.loadgen.stdout, 2 * JOB_MAX_SECONDS + JOB_ANSWER_SLACK_S, "loadgen")
        )
        if "failed" in answer:
            raise BenchError(f"load generator against {server.name}: {answer['failed']}")
        if answer["errors"] or answer["calls"] < calls:
            raise BenchError(
                f"{server.name}: {answer['calls']} of {calls} calls made, "
                f"failed ones by status: {answer['errors'] or 'none'}"
            )
        log(
            f"  {server.name:<10} C={concurrency:<3} {answer['calls']:>6} calls "
            f"{answer['calls_per_s']:8.0f}/s p50 {answer['p50_ms']:7.2f} ms "
            f"p99 {answer['p99_ms']:7.2f} ms cpu/1k {answer['server_cpu_s_per_1k_calls']:.3f} s"
        )
        return answer

    def measure(
        self,
        servers: Sequence[Server],
        *,
        calls: int,
        concurrency: int,
        warmup: int,
        rounds: int,
        pick: Callable[[dict[str, Any]], float],
        calls_for: Mapping[str, int] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Rounds of one job per server, alternating their order; each keeps its median round."""
        results: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
        for round_index in range(rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for server in order:
                size = (calls_for or {}).get(server.name, calls)
                results[server.name].append(
                    self.run_job(server, calls=size, concurrency=concurrency, warmup=warmup)
                )
        figures: dict[str, dict[str, Any]] = {}
        for server in servers:
            runs = sorted(results[server.name], key=pick)
            median = runs[(len(runs) - 1) // 2]
            figures[server.name] = {
                "calls": median["calls"],
                "calls_per_s": median["calls_per_s"],
                "p50_ms": median["p50_ms"],
                "p90_ms": median["p90_ms"],
                "p99_ms": median["p99_ms"],
                "cpu_s_per_1k_calls": median["server_cpu_s_per_1k_calls"],
                "peak_rss_mb": peak_rss_mb(server.pid),
                "client_cpu_s_per_1k_calls": median["client_cpu_s_per_1k_calls"],
                "upstream_cpu_s_per_1k_calls": median["upstream_cpu_s_per_1k_calls"],
                "other_cpu_s_per_1k_calls": median["other_cpu_s_per_1k_calls"],
                "rounds_calls_per_s": [run["calls_per_s"] for run in results[server.name]],
                "rounds_p50_ms": [run["p50_ms"] for run in results[server.name]],
            }
        return figures


RATIO_KEYS: Final = (
    "calls_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_s_per_1k_calls",
    "peak_rss_mb",
)


def ratios(figures: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """Each figure divided by the reference's (0.0 where the reference is 0)."""
    return {key: figures[key] / reference[key] if reference[key] else 0.0 for key in RATIO_KEYS}


def scenario_upstream_0ms(bench: Bench, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    log("upstream 0 ms: real server vs bare proxy, C=64 then C=1")
    upstream = bench.start_upstream(0)
    real = bench.start_real(upstream)
    startups.append(real.startup_s)
    bare = bench.start_bare(upstream)
    servers = (bare, real)
    c64 = bench.measure(
        servers,
        calls=sizes.c64_calls,
        concurrency=64,
        warmup=sizes.c64_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["calls_per_s"],
    )
    metrics_serving = probe_metrics(real.metrics_listen)
    c1 = bench.measure(
        servers,
        calls=sizes.c1_calls,
        concurrency=1,
        warmup=sizes.c1_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["p50_ms"],
    )
    for server in servers:
        bench.procs.stop(server.process)
    return {
        "c64": {
            "upstream_delay_ms": 0,
            "concurrency": 64,
            "servers": c64,
            "ratios_to_bare": {"real": ratios(c64["real"], c64["bare"])},
        },
        "c1": {
            "upstream_delay_ms": 0,
            "concurrency": 1,
            "servers": c1,
            "ratios_to_bare": {"real": ratios(c1["real"], c1["bare"])},
            "real_p50_minus_bare_p50_ms": c1["real"]["p50_ms"] - c1["bare"]["p50_ms"],
        },
        "metrics_serving": metrics_serving,
    }


def scenario_upstream_slow(bench: Bench, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    delay_ms: float = bench.args.delay_ms
    log(f"upstream {delay_ms:g} ms: real server vs bare proxy vs thread-pool server, C=256")
    upstream = bench.start_upstream(delay_ms)
    real = bench.start_real(upstream)
    startups.append(real.startup_s)
    bare = bench.start_bare(upstream)
    threadpool = bench.start_threadpool(upstream)
    servers = (bare, real, threadpool)
    c256 = bench.measure(
        servers,
        calls=sizes.c256_calls,
        concurrency=256,
        warmup=sizes.c256_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["calls_per_s"],
        calls_for={"threadpool": sizes.threadpool_calls},
    )
    for server in servers:
        bench.procs.stop(server.process)
    ideal = 256 / (delay_ms / MS_PER_S) if delay_ms > 0 else 0.0
    return {
        "upstream_delay_ms": delay_ms,
        "concurrency": 256,
        "ideal_calls_per_s": ideal,
        "threadpool_workers": bench.args.threadpool_workers,
        "servers": c256,
        "ratios_to_bare": {
            "real": ratios(c256["real"], c256["bare"]),
            "threadpool": ratios(c256["threadpool"], c256["bare"]),
        },
        "real_vs_threadpool_calls_per_s": (
            c256["real"]["calls_per_s"] / c256["threadpool"]["calls_per_s"]
        ),
    }


def _memory_run(bench: Bench, total: int, upstream: Upstream, state_s: int | None) -> Any:
    """One fresh real server through `total` calls at C=64: RSS at half and end, peak, events."""
    half = total // 2
    real = bench.start_real(upstream, state_s=state_s)
    first = bench.run_job(real, calls=half, concurrency=64)
    second = bench.run_job(real, calls=total - half, concurrency=64)
    peak = peak_rss_mb(real.pid)
    bench.procs.stop(real.process)
    return real, {
        "rss_mb_at_half": first["server_rss_mb"],
        "rss_mb_at_end": second["server_rss_mb"],
        "growth_mb": second["server_rss_mb"] - first["server_rss_mb"],
        "peak_rss_mb": peak,
        "calls_per_s": (first["calls_per_s"] + second["calls_per_s"]) / 2,
        "cpu_s_per_1k_calls": (
            first["server_cpu_s_per_1k_calls"] + second["server_cpu_s_per_1k_calls"]
        )
        / 2,
        "log_rpc_events": count_rpc_events(real.log_path),
    }


def scenario_memory(bench: Bench, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    """The production run (a day of state per call), then the leak check (state kept 2 s)."""
    total = sizes.memory_calls
    log(f"memory: {total} calls at C=64 through one real server, upstream 0 ms")
    upstream = bench.start_upstream(0)
    real, production = _memory_run(bench, total, upstream, None)
    startups.append(real.startup_s)
    log(f"memory, leak check: {total} more calls, state kept {LEAK_CHECK_STATE_S} s")
    real, leak_check = _memory_run(bench, total, upstream, LEAK_CHECK_STATE_S)
    startups.append(real.startup_s)
    return {
        "upstream_delay_ms": 0,
        "concurrency": 64,
        "calls": total,
        **production,
        "retained_bytes_per_call": production["growth_mb"] * 2**20 / (total - total // 2),
        "leak_check": {"state_kept_s": LEAK_CHECK_STATE_S, **leak_check},
    }


def scenario_startup(bench: Bench, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    log(f"start-up: {sizes.startup_runs} more starts of the real server")
    upstream = bench.start_upstream(0)
    for _ in range(sizes.startup_runs):
        real = bench.start_real(upstream)
        startups.append(real.startup_s)
        bench.procs.stop(real.process)
    return {
        "runs_s": startups,
        "median_s": statistics.median(startups),
        "max_s": max(startups),
    }


def judge(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets against this run's figures (those of the scenarios that ran)."""
    checks: list[tuple[str, float, float, str]] = []
    if "upstream_0ms_c64" in results:
        c64, c1 = results["upstream_0ms_c64"]["servers"], results["upstream_0ms_c1"]["servers"]
        checks.append(
            (
                "0ms C=64: real calls/s >= 0.9 x bare",
                c64["real"]["calls_per_s"],
                TARGET_THROUGHPUT_RATIO * c64["bare"]["calls_per_s"],
                ">=",
            )
        )
        checks.append(
            (
                "0ms C=1: real p50 <= bare p50 + 0.3 ms",
                c1["real"]["p50_ms"],
                c1["bare"]["p50_ms"] + TARGET_P50_EXTRA_MS,
                "<=",
            )
        )
    if "upstream_slow_c256" in results:
        slow = results["upstream_slow_c256"]
        real = slow["servers"]["real"]["calls_per_s"]
        bound = min(slow["ideal_calls_per_s"], slow["servers"]["bare"]["calls_per_s"])
        checks.append(
            (
                "slow C=256: real calls/s >= 0.9 x min(256/delay, bare)",
                real,
                TARGET_THROUGHPUT_RATIO * bound,
                ">=",
            )
        )
        checks.append(
            (
                "slow C=256: real calls/s >= 20 x thread-pool",
                real,
                TARGET_VS_THREADPOOL * slow["servers"]["threadpool"]["calls_per_s"],
                ">=",
            )
        )
    if "memory" in results:
        memory = results["memory"]
        checks.append(
            ("memory: peak RSS <= 120 MB", memory["peak_rss_mb"], TARGET_PEAK_RSS_MB, "<=")
        )
        checks.append(
            ("memory: growth second half <= 5 MB", memory["growth_mb"], TARGET_GROWTH_MB, "<=")
        )
        checks.append(
            (
                f"memory, state kept {LEAK_CHECK_STATE_S} s (leak check): growth second half "
                "<= 5 MB",
                memory["leak_check"]["growth_mb"],
                TARGET_GROWTH_MB,
                "<=",
            )
        )
    if "startup" in results:
        checks.append(
            (
                "start-up to SERVING <= 1.0 s (slowest)",
                results["startup"]["max_s"],
                TARGET_STARTUP_S,
                "<=",
            )
        )
    return [
        {
            "target": name,
            "value": value,
            "bound": bound,
            "pass": value >= bound if op == ">=" else value <= bound,
        }
        for name, value, bound, op in checks
    ]


def environment(env: Mapping[str, str]) -> dict[str, Any]:
    """What ran: versions, cores, and which yunpian_sms_server the real server imports."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aiohttp, grpc, yunpian_sms_server as s; "
            "print(s.__path__[0]); print(grpc.__version__); print(aiohttp.__version__)",
        ],
        capture_output=True,
        text=True,
        env=dict(env),
        check=True,
        timeout=READY_TIMEOUT_S,
    )
    module, grpc_version, aiohttp_version = probe.stdout.split()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "grpcio": grpc_version,
        "aiohttp": aiohttp_version,
        "server_package": module,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark yunpian-sms against a bare proxy (issue 6); JSON on stdout."
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    parser.add_argument("--calls", type=int, help="calls per round, upstream 0 ms, C=64")
    parser.add_argument("--c1-calls", type=int, help="calls per round, upstream 0 ms, C=1")
    parser.add_argument("--c256-calls", type=int, help="calls per round, slow upstream, C=256")
    parser.add_argument("--threadpool-calls", type=int, help="calls per round, thread-pool")
    parser.add_argument("--memory-calls", type=int, help="calls of the memory run")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (median kept)")
    parser.add_argument("--startup-runs", type=int, help="extra starts timed to SERVING")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the slow upstream's delay")
    parser.add_argument("--threadpool-workers", type=int, default=10)
    parser.add_argument(
        "--per-phone-limits",
        nargs="*",
        default=list(PRODUCTION_PER_PHONE_LIMITS),
        help="limits.per_phone of the real server (default: the production defaults)",
    )
    parser.add_argument(
        "--no-request-ids",
        dest="request_ids",
        action="store_false",
        help="send SendCode without a request_id (default: a fresh one per call, as the SDK)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="run only these scenarios (default: all)",
    )
    parser.add_argument(
        "--quiet-wait",
        dest="quiet_wait_s",
        type=float,
        help="before each measurement, wait up to this many seconds for other processes to "
        f"leave the machine idle (default: {DEFAULT_QUIET_WAIT_S:g}; 0 with --smoke)",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else FULL
    overrides = {
        "c64_calls": args.calls,
        "c1_calls": args.c1_calls,
        "c256_calls": args.c256_calls,
        "threadpool_calls": args.threadpool_calls,
        "memory_calls": args.memory_calls,
        "rounds": args.rounds,
        "startup_runs": args.startup_runs,
    }
    return replace(sizes, **{key: value for key, value in overrides.items() if value is not None})


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="yunpian-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"logs and configs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet_wait_s is None:
        args.quiet_wait_s = 0.0 if args.smoke else DEFAULT_QUIET_WAIT_S
    sizes = sizes_from(args)
    started = time.perf_counter()
    with work_directory(args.keep) as workdir:
        bench = Bench(args, workdir)
        try:
            startups: list[float] = []
            results: dict[str, Any] = {}
            metrics_serving = None
            if "zero" in args.only:
                zero = scenario_upstream_0ms(bench, sizes, startups)
                results["upstream_0ms_c64"], results["upstream_0ms_c1"] = zero["c64"], zero["c1"]
                metrics_serving = zero["metrics_serving"]
            if "slow" in args.only:
                results["upstream_slow_c256"] = scenario_upstream_slow(bench, sizes, startups)
            if "memory" in args.only:
                results["memory"] = scenario_memory(bench, sizes, startups)
            if "startup" in args.only:
                results["startup"] = scenario_startup(bench, sizes, startups)
            report = {
                "mode": "smoke" if args.smoke else "full",
                "sizes": asdict(sizes),
                "request_ids": args.request_ids,
                "environment": environment(bench.procs.env),
                "real_server_features": {**bench.features, "metrics_serving": metrics_serving},
                "scenarios": results,
                "targets": judge(results),
                "wall_time_s": time.perf_counter() - started,
            }
        except BenchError as error:
            log(f"failed: {error}")
            return 1
        finally:
            bench.procs.stop_all()
    report["all_targets_pass"] = all(target["pass"] for target in report["targets"])
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    for target in report["targets"]:
        verdict = "pass" if target["pass"] else "FAIL"
        log(f"{verdict}: {target['target']}: {target['value']:.3f} vs {target['bound']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

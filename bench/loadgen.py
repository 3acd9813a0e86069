"""The load generator: a separate process that runs SendCode jobs on request (grpc.aio client).

Run by the benchmark (`load_generator.py`), which writes one JSON job per line on its stdin and
reads one JSON result per line from its stdout. A job is N calls at concurrency C to one target,
after a warm-up; phone numbers are distinct valid mainland mobiles (`phone_start + i`), so
per-number limits never refuse. While the measured calls run it reads the server's CPU time and
memory from /proc.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import secrets
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import grpc
from proc_stats import cpu_seconds, machine_busy_seconds, peak_rss_mb, rss_mb

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

CODE: Final = "123456"
# How long the load generator waits for a server's channel to connect.
CONNECT_TIMEOUT_S: Final = 10.0
# The random half of a request_id; the other half is the call's index (32 hex digits in all,
# the SDK's new_request_id() form).
REQUEST_ID_PREFIX_BYTES: Final = 12
PERCENTILES: Final = (50, 90, 99)
MS_PER_S: Final = 1000.0
CALLS_PER_CPU_FIGURE: Final = 1000
# Before measuring, wait (boundedly) until the machine is this idle: other work on a shared
# machine (someone's test suite) would otherwise be measured as the server's slowness.
QUIET_CORES: Final = 0.1
QUIET_SAMPLE_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement: `calls` SendCodes at `concurrency` to `target`, after `warmup` calls."""

    target: str
    calls: int
    concurrency: int
    phone_start: int
    server_pid: int
    warmup: int = 0
    max_seconds: float = 60.0
    timeout_s: float = 30.0
    request_ids: bool = True
    upstream_pid: int = 0  # when set, the upstream's CPU is measured too
    quiet_wait_s: float = 0.0  # wait at most this long for an idle machine before measuring
    # Calls/s started on a fixed schedule (at most `concurrency` at once); 0: a closed loop.
    rate: float = 0.0
    token: str = ""  # when set, every call carries `authorization: Bearer <token>`


@dataclass(slots=True)
class Result:
    """What a job measured; latencies are of the calls that succeeded."""

    calls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    calls_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_s_per_1k_calls: float = 0.0
    server_rss_mb: float = 0.0
    server_peak_rss_mb: float = 0.0
    client_cpu_s_per_1k_calls: float = 0.0
    upstream_cpu_s_per_1k_calls: float = 0.0
    # CPU the machine spent on anything but server, client and upstream while measuring.
    other_cpu_s_per_1k_calls: float = 0.0
    quiet_before: bool = True


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_calls(
    stub: pb_grpc.SmsServiceAsyncStub, job: Job, first_phone: int, calls: int
) -> tuple[list[float], Counter[str], float]:
    """Runs `calls` SendCodes at the job's concurrency, stopping early at max_seconds."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + job.max_seconds
    prefix = secrets.token_hex(REQUEST_ID_PREFIX_BYTES)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    next_index = 0
    first_start = loop.time()
    metadata = (("authorization", f"Bearer {job.token}"),) if job.token else None

    async def worker() -> None:
        nonlocal next_index
        while next_index < calls and loop.time() < stop_at:
            index = next_index
            next_index += 1
            if job.rate > 0:
                await asyncio.sleep(max(0.0, first_start + index / job.rate - loop.time()))
            request = pb.SendCodeRequest(
                phone_number=str(first_phone + index),
                code=CODE,
                usage_type=pb.USAGE_TYPE_SIGN_IN,
                request_id=f"{prefix}{index:08x}" if job.request_ids else "",
            )
            started = time.perf_counter()
            try:
                await stub.SendCode(request, timeout=job.timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(job.concurrency, calls)))))
    return latencies, errors, time.perf_counter() - started


async def wait_quiet(max_wait_s: float) -> bool:
    """Waits until the machine is idle or max_wait_s has passed; whether it was idle."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + max_wait_s
    while True:
        busy = machine_busy_seconds()
        await asyncio.sleep(QUIET_SAMPLE_S)
        if machine_busy_seconds() - busy < QUIET_CORES * QUIET_SAMPLE_S:
            return True
        if loop.time() >= give_up:
            return False


async def run_job(job: Job) -> Result:
    """Connects, warms up, then measures."""
    quiet = await wait_quiet(job.quiet_wait_s) if job.quiet_wait_s > 0 else True
    async with grpc.aio.insecure_channel(job.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        stub = pb_grpc.SmsServiceStub(channel)
        if job.warmup:
            await _run_calls(stub, job, job.phone_start, job.warmup)
        machine_before = machine_busy_seconds()
        server_cpu_before = cpu_seconds(job.server_pid)
        client_cpu_before = _client_cpu_s()
        upstream_cpu_before = cpu_seconds(job.upstream_pid) if job.upstream_pid else 0.0
        latencies, errors, elapsed = await _run_calls(
            stub, job, job.phone_start + job.warmup, job.calls
        )
        server_cpu = cpu_seconds(job.server_pid) - server_cpu_before
        machine = machine_busy_seconds() - machine_before
        client_cpu = _client_cpu_s() - client_cpu_before
        upstream_cpu = (
            cpu_seconds(job.upstream_pid) - upstream_cpu_before if job.upstream_pid else 0.0
        )
    latencies.sort()
    calls = len(latencies) + sum(errors.values())
    per_1k = CALLS_PER_CPU_FIGURE / calls if calls else 0.0
    result = Result(
        calls=calls,
        ok=len(latencies),
        errors=dict(errors),
        elapsed_s=elapsed,
        calls_per_s=calls / elapsed if elapsed > 0 else 0.0,
        max_ms=latencies[-1] * MS_PER_S if latencies else 0.0,
        server_cpu_s=server_cpu,
        server_cpu_s_per_1k_calls=server_cpu * per_1k,
        server_rss_mb=rss_mb(job.server_pid),
        server_peak_rss_mb=peak_rss_mb(job.server_pid),
        client_cpu_s_per_1k_calls=client_cpu * per_1k,
        upstream_cpu_s_per_1k_calls=upstream_cpu * per_1k,
        other_cpu_s_per_1k_calls=max(0.0, machine - server_cpu - client_cpu - upstream_cpu)
        * per_1k,
        quiet_before=quiet,
    )
    result.p50_ms, result.p90_ms, result.p99_ms = (
        percentile(latencies, pct) * MS_PER_S for pct in PERCENTILES
    )
    return result


async def serve_jobs() -> None:
    """Answers each job line on stdin with a result line on stdout, until stdin closes."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        fields: dict[str, Any] = json.loads(line)
        try:
            answer: dict[str, Any] = asdict(await run_job(Job(**fields)))
        except (grpc.aio.AioRpcError, TimeoutError, OSError, ValueError) as error:
            answer = {"failed": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


def main() -> int:
    asyncio.run(serve_jobs())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The load generator: a separate process that runs jobs of calls on request (grpc.aio client).

Run by the benchmark (`load_generator.py`), which writes one JSON job per line on its stdin and
reads one JSON result per line from its stdout. A job is N calls of one RPC at concurrency C to
one target, after a warm-up. While the measured calls run it reads the server's CPU time and
memory from /proc.

* SendCode: phone numbers are distinct valid mainland mobiles (`phone_start + i`), so per-number
  limits never refuse; the request_ids are `prefix + i` (the prefix a fresh random one, or one
  given: the same prefix and numbers again replay a job, and the answers say `replayed`).
* StartVerification: the same numbers and request_ids; the ids of the verifications it started
  are kept in this process under `keep_verifications`, for later check jobs.
* CheckVerification: call i checks the kept verification i mod N with a wrong code of
  `code_length` digits (it answers approved = false), so N verifications take k * N checks
  that use k checks each. A code that happens to be right (one in 10**code_length) answers
  approved = true; the calls that later reach that spent verification are not failures.
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
SEND_CODE: Final = "SendCode"
START_VERIFICATION: Final = "StartVerification"
CHECK_VERIFICATION: Final = "CheckVerification"
RPCS: Final = (SEND_CODE, START_VERIFICATION, CHECK_VERIFICATION)
PERCENTILES: Final = (50, 90, 99)
MS_PER_S: Final = 1000.0
CALLS_PER_CPU_FIGURE: Final = 1000
# Before measuring, wait (boundedly) until the machine is this idle: other work on a shared
# machine (someone's test suite) would otherwise be measured as the server's slowness.
QUIET_CORES: Final = 0.1
QUIET_SAMPLE_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement: `calls` calls of `rpc` at `concurrency` to `target`, after `warmup`."""

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
    rpc: str = SEND_CODE
    # The request_ids' prefix: "" for a fresh random one; a former job's to replay it.
    request_id_prefix: str = ""
    # StartVerification: the name its verifications are kept under ("": not kept).
    keep_verifications: str = ""
    # CheckVerification: the name of the kept verifications it checks, and the codes' length.
    verifications: str = ""
    code_length: int = 6
    store_pid: int = 0  # when set, the store's (redis-server's) CPU is measured too


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
    store_cpu_s_per_1k_calls: float = 0.0
    # CPU the machine spent on anything but server, client and upstream while measuring.
    other_cpu_s_per_1k_calls: float = 0.0
    quiet_before: bool = True
    request_id_prefix: str = ""
    replayed: int = 0  # answers marked replayed (SendCode, StartVerification)
    approved: int = 0  # CheckVerification answers approved = true (a right guess)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Verifications kept by StartVerification jobs, by name; those a right guess approved.
_kept: dict[str, list[str]] = {}
_approved: set[str] = set()


class UnexpectedAnswerError(Exception):
    """An answer OK but not the one the job means to measure: a failed call, named by it."""


@dataclass(slots=True)
class Tally:
    """What the answers of a run of calls said, beyond their latencies."""

    errors: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    approved: int = 0


class CallMaker:
    """Makes call `index` of a job: its request, and what its answer counts for."""

    def __init__(self, stub: pb_grpc.SmsServiceAsyncStub, job: Job, prefix: str) -> None:
        self._stub = stub
        self._job = job
        self._prefix = prefix
        self._metadata = (("authorization", f"Bearer {job.token}"),) if job.token else None
        if job.rpc not in RPCS:
            raise ValueError(f"unknown rpc {job.rpc!r}: one of {', '.join(RPCS)}")
        self._checked: list[str] = []
        if job.rpc == CHECK_VERIFICATION:
            self._checked = _kept.get(job.verifications, [])
            if not self._checked:
                raise ValueError(f"no verifications kept as {job.verifications!r}")
        if job.rpc == START_VERIFICATION and job.keep_verifications:
            _kept[job.keep_verifications] = []

    def _request_id(self, index: int) -> str:
        return f"{self._prefix}{index:08x}" if self._job.request_ids else ""

    async def call(self, index: int, tally: Tally) -> None:
        """Makes the call; a status other than OK is raised (AioRpcError), as is an OK answer
        that says the job measures something else (UnexpectedAnswerError)."""
        job, timeout = self._job, self._job.timeout_s
        phone = str(job.phone_start + index)
        if job.rpc == SEND_CODE:
            sent = await self._stub.SendCode(
                pb.SendCodeRequest(
                    phone_number=phone,
                    code=CODE,
                    usage_type=pb.USAGE_TYPE_SIGN_IN,
                    request_id=self._request_id(index),
                ),
                timeout=timeout,
                metadata=self._metadata,
            )
            tally.replayed += sent.replayed
        elif job.rpc == START_VERIFICATION:
            started = await self._stub.StartVerification(
                pb.StartVerificationRequest(
                    phone_number=phone,
                    usage_type=pb.USAGE_TYPE_SIGN_IN,
                    request_id=self._request_id(index),
                ),
                timeout=timeout,
                metadata=self._metadata,
            )
            tally.replayed += started.replayed
            if job.keep_verifications:
                _kept[job.keep_verifications].append(started.verification_id)
        else:
            verification_id = self._checked[index % len(self._checked)]
            try:
                checked = await self._stub.CheckVerification(
                    pb.CheckVerificationRequest(
                        verification_id=verification_id,
                        code=f"{index % 10**job.code_length:0{job.code_length}d}",
                    ),
                    timeout=timeout,
                    metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as error:
                spent = error.code() is grpc.StatusCode.FAILED_PRECONDITION
                if not (spent and verification_id in _approved):
                    raise
                return  # the verification a right guess spent: nothing to check any more
            if checked.approved:
                tally.approved += 1
                _approved.add(verification_id)
            elif checked.verification.status != pb.VERIFICATION_STATUS_PENDING:
                # One check too many ended it: the job was sized wrongly, and measures less.
                raise UnexpectedAnswerError("CHECK_ENDED_THE_VERIFICATION")


async def _run_calls(
    maker: CallMaker, job: Job, first_index: int, calls: int
) -> tuple[list[float], Tally, float]:
    """Runs calls `first_index` to `first_index + calls - 1` at the job's concurrency, stopping
    early at max_seconds."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + job.max_seconds
    latencies: list[float] = []
    tally = Tally()
    next_index = 0
    first_start = loop.time()

    async def worker() -> None:
        nonlocal next_index
        while next_index < calls and loop.time() < stop_at:
            index = next_index
            next_index += 1
            if job.rate > 0:
                await asyncio.sleep(max(0.0, first_start + index / job.rate - loop.time()))
            started = time.perf_counter()
            try:
                await maker.call(first_index + index, tally)
            except grpc.aio.AioRpcError as error:
                tally.errors[error.code().name] += 1
            except UnexpectedAnswerError as error:
                tally.errors[str(error)] += 1
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(job.concurrency, calls)))))
    return latencies, tally, time.perf_counter() - started


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
    prefix = job.request_id_prefix or secrets.token_hex(REQUEST_ID_PREFIX_BYTES)
    async with grpc.aio.insecure_channel(job.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        maker = CallMaker(pb_grpc.SmsServiceStub(channel), job, prefix)
        if job.warmup:
            await _run_calls(maker, job, 0, job.warmup)
        machine_before = machine_busy_seconds()
        server_cpu_before = cpu_seconds(job.server_pid)
        client_cpu_before = _client_cpu_s()
        upstream_cpu_before = cpu_seconds(job.upstream_pid) if job.upstream_pid else 0.0
        store_cpu_before = cpu_seconds(job.store_pid) if job.store_pid else 0.0
        latencies, tally, elapsed = await _run_calls(maker, job, job.warmup, job.calls)
        server_cpu = cpu_seconds(job.server_pid) - server_cpu_before
        machine = machine_busy_seconds() - machine_before
        client_cpu = _client_cpu_s() - client_cpu_before
        upstream_cpu = (
            cpu_seconds(job.upstream_pid) - upstream_cpu_before if job.upstream_pid else 0.0
        )
        store_cpu = cpu_seconds(job.store_pid) - store_cpu_before if job.store_pid else 0.0
    latencies.sort()
    calls = len(latencies) + sum(tally.errors.values())
    per_1k = CALLS_PER_CPU_FIGURE / calls if calls else 0.0
    measured_cpu = server_cpu + client_cpu + upstream_cpu + store_cpu
    result = Result(
        calls=calls,
        ok=len(latencies),
        errors=dict(tally.errors),
        elapsed_s=elapsed,
        calls_per_s=calls / elapsed if elapsed > 0 else 0.0,
        max_ms=latencies[-1] * MS_PER_S if latencies else 0.0,
        server_cpu_s=server_cpu,
        server_cpu_s_per_1k_calls=server_cpu * per_1k,
        server_rss_mb=rss_mb(job.server_pid),
        server_peak_rss_mb=peak_rss_mb(job.server_pid),
        client_cpu_s_per_1k_calls=client_cpu * per_1k,
        upstream_cpu_s_per_1k_calls=upstream_cpu * per_1k,
        store_cpu_s_per_1k_calls=store_cpu * per_1k,
        other_cpu_s_per_1k_calls=max(0.0, machine - measured_cpu) * per_1k,
        quiet_before=quiet,
        request_id_prefix=prefix,
        replayed=tally.replayed,
        approved=tally.approved,
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

"""Profiles a server under load with py-spy and prints where its CPU time goes.

    .venv/bin/python bench/profile_server.py                 # the real server, 20,000 calls, C=64
    .venv/bin/python bench/profile_server.py --server bare   # the bare proxy, for comparison
    .venv/bin/python bench/profile_server.py --server redis  # the real server on Redis (production)

Starts the fake upstream (0 ms), the server and the load generator as `run.py` does (one rig),
records the server with `py-spy record --format raw` (collapsed stacks) while the calls run, and
prints, as text: the share of samples by package of the innermost frame and by package anywhere
in the stack, the top functions by self time, and the inclusive share of the server's own
functions; each also as microseconds of the server's CPU per call (its CPU per call, from /proc,
times the share). `--server redis` profiles the real server as the production scenario runs it:
on a redis-server of its own, with verifications on; `--rpc` picks the RPC. `--raw PATH` keeps
the stacks (for flamegraph tools). py-spy needs ptrace rights over the server (root, or
ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

from load_generator import (
    CHECK_VERIFICATION,
    DEFAULT_QUIET_WAIT_S,
    SEND_CODE,
    START_VERIFICATION,
    LoadGenerator,
)
from production import CHECKS_PER_VERIFICATION
from progress import BenchError, log
from real_server_config import PRODUCTION_PER_PHONE_LIMITS
from redis_server import start_redis
from rig import open_rig
from servers import BIN_DIR, Server

from yunpian_sms_server.config import DEFAULT_VERIFY_CODE_LENGTH

SAMPLE_RATE_HZ: Final = 200
PY_SPY_STOP_TIMEOUT_S: Final = 30.0
TOP_FUNCTIONS: Final = 25
PROFILED_VERIFICATIONS: Final = "profiled"
# "function (path/to/file.py:123)": one frame of py-spy's collapsed output.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^():]*)(?::\d+)?\)$")
# Innermost-frame file paths mapped to the component they belong to, first match wins.
COMPONENTS: Final = (
    ("yunpian_sms_server/", "yunpian_sms_server"),
    ("yunpian/sms/", "generated stubs"),
    ("grpc_health", "grpc (health)"),
    ("grpc/", "grpc"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("redis/", "redis-py"),
    ("multidict/", "aiohttp"),
    ("aiohappyeyeballs/", "aiohttp"),
    ("structlog/", "structlog"),
    ("phonenumbers/", "phonenumbers"),
    ("google/protobuf", "protobuf"),
    ("asyncio/", "asyncio"),
    ("json/", "json"),
    ("logging/", "logging"),
)


def component(path: str) -> str:
    """The package a frame's file belongs to."""
    for needle, name in COMPONENTS:
        if needle in path:
            return name
    return "other (stdlib, interpreter)"


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, path) of one collapsed frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["path"]


def summarize(raw: Path, cpu_ms_per_call: float | None = None) -> str:
    """The report of a py-spy raw (collapsed) file; with the server's CPU per call, each share
    also as microseconds per call."""
    by_component: Counter[str] = Counter()
    by_component_inclusive: Counter[str] = Counter()
    by_self: Counter[str] = Counter()
    by_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [parse_frame(frame) for frame in stack.split(";")]
        function, path = frames[-1]
        by_component[component(path)] += count
        for name in {component(path) for _, path in frames}:
            by_component_inclusive[name] += count
        by_self[f"{function} ({Path(path).name})"] += count
        for name in {
            f"{function} ({Path(path).name})"
            for function, path in frames
            if "yunpian_sms_server/" in path
        }:
            by_inclusive[name] += count
    if not total:
        return "no samples (was the server busy? does py-spy have ptrace rights?)"

    us_per_call = 1000 * cpu_ms_per_call if cpu_ms_per_call is not None else None

    def table(title: str, counts: Counter[str], limit: int) -> list[str]:
        rows = [f"{title} ({total} samples)"]
        for name, count in counts.most_common(limit):
            share = count / total
            cost = f" {share * us_per_call:6.1f} us/call" if us_per_call is not None else ""
            rows.append(f"  {100 * share:5.1f}%{cost}  {name}")
        return rows

    lines = []
    if cpu_ms_per_call is not None:
        lines.append(f"Server CPU per call: {1000 * cpu_ms_per_call:.0f} us")
    packages = len(COMPONENTS) + 1
    lines += table("Innermost frame, by package", by_component, packages)
    lines += table("Anywhere in the stack, by package", by_component_inclusive, packages)
    lines += table("Top functions by self time", by_self, TOP_FUNCTIONS)
    lines += table("yunpian_sms_server functions, inclusive", by_inclusive, TOP_FUNCTIONS)
    return "\n".join(lines)


def record(
    load: LoadGenerator,
    server: Server,
    calls: int,
    raw: Path,
    *,
    concurrency: int,
    native: bool,
    rpc: str = SEND_CODE,
    store_pid: int = 0,
) -> float:
    """Runs `calls` of `rpc` at `concurrency` against `server` while py-spy records it; the
    server's CPU milliseconds per call, as /proc counted them while py-spy recorded."""
    py_spy = shutil.which("py-spy", path=str(BIN_DIR)) or shutil.which("py-spy")
    if py_spy is None:
        raise BenchError("py-spy is not installed: pip install -r bench/requirements.txt")

    def job(calls: int) -> dict[str, Any]:
        if rpc != CHECK_VERIFICATION:
            keep = PROFILED_VERIFICATIONS if rpc == START_VERIFICATION else ""
            options: dict[str, Any] = {"rpc": rpc, "keep_verifications": keep}
        else:  # check verifications started for it, each CHECKS_PER_VERIFICATION times
            starts = -(-calls // CHECKS_PER_VERIFICATION)
            load.run_job(
                server,
                calls=starts,
                concurrency=concurrency,
                rpc=START_VERIFICATION,
                keep_verifications=PROFILED_VERIFICATIONS,
            )
            options = {"rpc": rpc, "verifications": PROFILED_VERIFICATIONS}
            options["code_length"] = DEFAULT_VERIFY_CODE_LENGTH
        return load.run_job(
            server, calls=calls, concurrency=concurrency, store_pid=store_pid, **options
        )

    job(calls // 10)  # warm up first
    argv = [py_spy, "record", "--pid", str(server.pid), "--rate", str(SAMPLE_RATE_HZ)]
    argv += ["--format", "raw", "--output", str(raw)]
    # --native shows the C and Cython frames (grpc's core, aiohttp's parsers) but stops the
    # server at each sample; without it those frames are folded into their Python caller.
    argv += ["--native"] if native else ["--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        answer = job(calls)
    finally:
        spy.send_signal(signal.SIGINT)
        _, errors = spy.communicate(timeout=PY_SPY_STOP_TIMEOUT_S)
    if not raw.exists():
        raise BenchError(f"py-spy wrote nothing: {errors.strip()}")
    if store_pid:
        log(f"redis-server CPU per call: {answer['store_cpu_s_per_1k_calls']:.3f} ms")
    # CPU seconds per 1,000 calls are milliseconds per call.
    return float(answer["server_cpu_s_per_1k_calls"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=("real", "redis", "bare"), default="real")
    parser.add_argument(
        "--rpc",
        choices=(SEND_CODE, START_VERIFICATION, CHECK_VERIFICATION),
        default=SEND_CODE,
        help="the RPC called (the verifications' only with --server redis or real)",
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--native", action="store_true", help="sample C/Cython frames too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yunpian-profile-") as workdir:
        raw = args.raw or Path(workdir) / "profile.txt"
        try:
            with open_rig(
                Path(workdir),
                per_phone_limits=PRODUCTION_PER_PHONE_LIMITS,
                request_ids=True,
                quiet_wait_s=DEFAULT_QUIET_WAIT_S,
            ) as rig:
                upstream = rig.servers.start_upstream(0)
                store_pid = 0
                if args.server == "bare":
                    server: Server = rig.servers.start_bare(upstream)
                elif args.server == "redis":
                    redis = start_redis(rig.processes)
                    store_pid = redis.pid
                    server = rig.servers.start_real(
                        upstream, label="redis", store_url=redis.url, verify=True
                    )
                else:
                    server = rig.servers.start_real(upstream, verify=True)
                log(
                    f"profiling the {args.server} server: {args.calls} {args.rpc} calls "
                    f"at C={args.concurrency}"
                )
                cpu_ms_per_call = record(
                    rig.load,
                    server,
                    args.calls,
                    raw,
                    concurrency=args.concurrency,
                    native=args.native,
                    rpc=args.rpc,
                    store_pid=store_pid,
                )
        except BenchError as error:
            log(f"failed: {error}")
            return 1
        print(summarize(raw, cpu_ms_per_call))
    return 0


if __name__ == "__main__":
    sys.exit(main())

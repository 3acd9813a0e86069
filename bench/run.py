"""The benchmark's entry point (bench/README.md): runs the scenarios asked for and prints every
figure, and the issue's targets judged, as one JSON document on stdout; progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from load_generator import DEFAULT_QUIET_WAIT_S
from progress import BenchError, log
from real_server_config import PRODUCTION_PER_PHONE_LIMITS
from report import environment, judge, log_verdicts
from rig import open_rig
from scenarios import SCENARIOS, run_scenarios
from sizes import FULL, SMOKE, Sizes


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
    parser.add_argument(
        "--verify-starts", type=int, help="production: StartVerifications per round (C=64)"
    )
    parser.add_argument(
        "--round-trip-calls", type=int, help="production: calls of each job Redis counts"
    )
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
        "verify_starts": args.verify_starts,
        "round_trip_calls": args.round_trip_calls,
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
        try:
            with open_rig(
                workdir,
                per_phone_limits=args.per_phone_limits,
                request_ids=args.request_ids,
                quiet_wait_s=args.quiet_wait_s,
            ) as rig:
                results = run_scenarios(
                    rig,
                    sizes,
                    args.only,
                    delay_ms=args.delay_ms,
                    threadpool_workers=args.threadpool_workers,
                )
                report = {
                    "mode": "smoke" if args.smoke else "full",
                    "sizes": asdict(sizes),
                    "request_ids": args.request_ids,
                    "environment": environment(rig.processes.env),
                    "real_server_features": {
                        **rig.servers.features,
                        "metrics_serving": results.metrics_serving,
                    },
                    "scenarios": results.scenarios,
                    "targets": judge(results.scenarios),
                    "wall_time_s": time.perf_counter() - started,
                }
        except BenchError as error:
            log(f"failed: {error}")
            return 1
    report["all_targets_pass"] = all(target["pass"] for target in report["targets"])
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    log_verdicts(report["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

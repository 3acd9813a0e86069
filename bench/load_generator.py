"""The load generator (`loadgen.py`, a child process) as the run drives it: one job of calls
against one server at a time, and rounds of jobs over servers, each keeping its median round."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from proc_stats import peak_rss_mb
from processes import BENCH_DIR, Processes, read_line
from progress import BenchError, log
from real_server_config import BENCH_TOKEN
from servers import Server

# Distinct valid mainland mobiles: 13800000000, 13800000001, ... (one per call of the run).
FIRST_PHONE: Final = 13_800_000_000
# One job's calls stop after this long whatever their count; the job's result then says so.
JOB_MAX_SECONDS: Final = 120.0
# How long the run waits for the load generator's answer beyond the job's own bound.
JOB_ANSWER_SLACK_S: Final = 60.0
CALL_TIMEOUT_S: Final = 30.0
# The machine is shared (2 cores): a measurement waits this long at most for it to be idle.
DEFAULT_QUIET_WAIT_S: Final = 20.0
# The RPCs a job can make (loadgen.py's names), and how progress lines abbreviate them.
SEND_CODE: Final = "SendCode"
START_VERIFICATION: Final = "StartVerification"
CHECK_VERIFICATION: Final = "CheckVerification"
_RPC_LABELS: Final = {SEND_CODE: "send", START_VERIFICATION: "start", CHECK_VERIFICATION: "check"}
# The figures a server is compared to the bare proxy by.
RATIO_KEYS: Final = (
    "calls_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_s_per_1k_calls",
    "peak_rss_mb",
)


class LoadGenerator:
    """The load generator process, and the phone numbers its jobs have used so far."""

    def __init__(self, processes: Processes, *, request_ids: bool, quiet_wait_s: float) -> None:
        self._request_ids = request_ids
        self._quiet_wait_s = quiet_wait_s
        self._next_phone = FIRST_PHONE
        self._process = processes.spawn(
            "loadgen",
            [sys.executable, str(BENCH_DIR / "loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run_job(
        self,
        server: Server,
        *,
        calls: int,
        concurrency: int,
        warmup: int = 0,
        rate: float = 0.0,
        rpc: str = SEND_CODE,
        replay: dict[str, Any] | None = None,
        keep_verifications: str = "",
        verifications: str = "",
        code_length: int = 0,
        store_pid: int = 0,
        request_ids: bool | None = None,
    ) -> dict[str, Any]:
        """Runs one job of `rpc` against `server`; fails on any failed call.

        `request_ids`: whether calls carry one (None: as the run was told, `--no-request-ids`).
        `replay`: the answer of an earlier job whose calls this one makes again (the same numbers
        and request_ids, no warm-up); every answer must then say `replayed`.
        """
        phone_start = self._next_phone
        if replay is not None:
            phone_start, warmup = replay["phone_start"], 0
        else:
            self._next_phone += warmup + calls
        job = {
            "target": server.target,
            "calls": calls,
            "concurrency": concurrency,
            "warmup": warmup,
            "phone_start": phone_start,
            "server_pid": server.pid,
            "upstream_pid": server.upstream.pid,
            "store_pid": store_pid,
            "max_seconds": JOB_MAX_SECONDS,
            "timeout_s": CALL_TIMEOUT_S,
            "request_ids": self._request_ids if request_ids is None else request_ids,
            "request_id_prefix": replay["request_id_prefix"] if replay is not None else "",
            "quiet_wait_s": self._quiet_wait_s,
            "rate": rate,
            # The real server's caller; the bare proxy and the thread-pool server ignore it.
            "token": BENCH_TOKEN,
            "rpc": rpc,
            "keep_verifications": keep_verifications,
            "verifications": verifications,
            **({"code_length": code_length} if code_length else {}),
        }
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        answer: dict[str, Any] = json.loads(
            read_line(self._process.stdout, 2 * JOB_MAX_SECONDS + JOB_ANSWER_SLACK_S, "loadgen")
        )
        if "failed" in answer:
            raise BenchError(f"load generator against {server.name}: {answer['failed']}")
        if answer["errors"] or answer["calls"] < calls:
            raise BenchError(
                f"{server.name}: {answer['calls']} of {calls} {rpc} calls made, "
                f"failed ones by status: {answer['errors'] or 'none'}"
            )
        if replay is not None and answer["replayed"] != calls:
            raise BenchError(
                f"{server.name}: {answer['replayed']} of {calls} {rpc} calls sent again with "
                "their request_ids were answered as replays"
            )
        answer["phone_start"] = phone_start
        label = "replay" if replay is not None else _RPC_LABELS.get(rpc, rpc)
        log(
            f"  {server.name:<10} {label:<6} C={concurrency:<3} "
            f"{answer['calls']:>6} calls {answer['calls_per_s']:8.0f}/s "
            f"p50 {answer['p50_ms']:7.2f} ms p99 {answer['p99_ms']:7.2f} ms "
            f"cpu/1k {answer['server_cpu_s_per_1k_calls']:.3f} s"
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
        return {
            server.name: median_figures(results[server.name], pick, server.pid)
            for server in servers
        }


def median_figures(
    runs: Sequence[dict[str, Any]], pick: Callable[[dict[str, Any]], float], pid: int
) -> dict[str, Any]:
    """The figures of the median of one server's rounds (by `pick`), and every round's calls/s
    and p50; `pid`'s peak memory."""
    median = sorted(runs, key=pick)[(len(runs) - 1) // 2]
    return {
        "calls": median["calls"],
        "calls_per_s": median["calls_per_s"],
        "p50_ms": median["p50_ms"],
        "p90_ms": median["p90_ms"],
        "p99_ms": median["p99_ms"],
        "cpu_s_per_1k_calls": median["server_cpu_s_per_1k_calls"],
        "peak_rss_mb": peak_rss_mb(pid),
        "client_cpu_s_per_1k_calls": median["client_cpu_s_per_1k_calls"],
        "upstream_cpu_s_per_1k_calls": median["upstream_cpu_s_per_1k_calls"],
        "store_cpu_s_per_1k_calls": median["store_cpu_s_per_1k_calls"],
        "other_cpu_s_per_1k_calls": median["other_cpu_s_per_1k_calls"],
        "rounds_calls_per_s": [run["calls_per_s"] for run in runs],
        "rounds_p50_ms": [run["p50_ms"] for run in runs],
        "rounds_p99_ms": [run["p99_ms"] for run in runs],
    }


def ratios(figures: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """Each figure divided by the reference's (0.0 where the reference is 0)."""
    return {key: figures[key] / reference[key] if reference[key] else 0.0 for key in RATIO_KEYS}

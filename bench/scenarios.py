"""The benchmark's scenarios (zero, slow, memory, startup; production in production.py): which
servers each starts, the load it sends them, and the figures it reports."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from load_generator import ratios
from proc_stats import peak_rss_mb
from production import scenario_production
from progress import log
from rig import Rig
from servers import RealServer, Upstream
from sizes import Sizes

# zero: upstream 0 ms at C=64 and C=1; slow: the slow upstream at C=256; production: the real
# server on Redis and on memory beside the bare proxy, with verifications (production.py).
SCENARIOS: Final = ("zero", "slow", "memory", "production", "startup")
# The memory scenario's leak check keeps every call's state (idempotency record, per-phone log)
# this long instead of a day, so the state turns over during the run and what remains is leaks.
LEAK_CHECK_STATE_S: Final = 2
MS_PER_S: Final = 1000.0


def scenario_upstream_0ms(rig: Rig, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    log("upstream 0 ms: real server vs bare proxy, C=64 then C=1")
    upstream = rig.servers.start_upstream(0)
    real = rig.servers.start_real(upstream)
    startups.append(real.startup_s)
    bare = rig.servers.start_bare(upstream)
    servers = (bare, real)
    c64 = rig.load.measure(
        servers,
        calls=sizes.c64_calls,
        concurrency=64,
        warmup=sizes.c64_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["calls_per_s"],
    )
    metrics_serving = real.metrics_serving()
    c1 = rig.load.measure(
        servers,
        calls=sizes.c1_calls,
        concurrency=1,
        warmup=sizes.c1_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["p50_ms"],
    )
    for server in servers:
        rig.servers.stop(server)
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


def scenario_upstream_slow(
    rig: Rig, sizes: Sizes, startups: list[float], *, delay_ms: float, threadpool_workers: int
) -> dict[str, Any]:
    log(f"upstream {delay_ms:g} ms: real server vs bare proxy vs thread-pool server, C=256")
    upstream = rig.servers.start_upstream(delay_ms)
    real = rig.servers.start_real(upstream)
    startups.append(real.startup_s)
    bare = rig.servers.start_bare(upstream)
    threadpool = rig.servers.start_threadpool(upstream, threadpool_workers)
    servers = (bare, real, threadpool)
    c256 = rig.load.measure(
        servers,
        calls=sizes.c256_calls,
        concurrency=256,
        warmup=sizes.c256_warmup,
        rounds=sizes.rounds,
        pick=lambda run: run["calls_per_s"],
        calls_for={"threadpool": sizes.threadpool_calls},
    )
    for server in servers:
        rig.servers.stop(server)
    ideal = 256 / (delay_ms / MS_PER_S) if delay_ms > 0 else 0.0
    return {
        "upstream_delay_ms": delay_ms,
        "concurrency": 256,
        "ideal_calls_per_s": ideal,
        "threadpool_workers": threadpool_workers,
        "servers": c256,
        "ratios_to_bare": {
            "real": ratios(c256["real"], c256["bare"]),
            "threadpool": ratios(c256["threadpool"], c256["bare"]),
        },
        "real_vs_threadpool_calls_per_s": (
            c256["real"]["calls_per_s"] / c256["threadpool"]["calls_per_s"]
        ),
    }


def _memory_run(
    rig: Rig, total: int, upstream: Upstream, state_s: int | None
) -> tuple[RealServer, dict[str, Any]]:
    """One fresh real server through `total` calls at C=64: RSS at half and end, peak, events."""
    half = total // 2
    real = rig.servers.start_real(upstream, state_s=state_s)
    first = rig.load.run_job(real, calls=half, concurrency=64)
    second = rig.load.run_job(real, calls=total - half, concurrency=64)
    peak = peak_rss_mb(real.pid)
    rig.servers.stop(real)
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
        "log_rpc_events": real.rpc_events(),
    }


def scenario_memory(rig: Rig, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    """The production run (a day of state per call), then the leak check (state kept 2 s)."""
    total = sizes.memory_calls
    log(f"memory: {total} calls at C=64 through one real server, upstream 0 ms")
    upstream = rig.servers.start_upstream(0)
    real, production = _memory_run(rig, total, upstream, None)
    startups.append(real.startup_s)
    log(f"memory, leak check: {total} more calls, state kept {LEAK_CHECK_STATE_S} s")
    real, leak_check = _memory_run(rig, total, upstream, LEAK_CHECK_STATE_S)
    startups.append(real.startup_s)
    return {
        "upstream_delay_ms": 0,
        "concurrency": 64,
        "calls": total,
        **production,
        "retained_bytes_per_call": production["growth_mb"] * 2**20 / (total - total // 2),
        "leak_check": {"state_kept_s": LEAK_CHECK_STATE_S, **leak_check},
    }


def scenario_startup(rig: Rig, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    log(f"start-up: {sizes.startup_runs} more starts of the real server")
    upstream = rig.servers.start_upstream(0)
    for _ in range(sizes.startup_runs):
        real = rig.servers.start_real(upstream)
        startups.append(real.startup_s)
        rig.servers.stop(real)
    return {
        "runs_s": startups,
        "median_s": statistics.median(startups),
        "max_s": max(startups),
    }


@dataclass(frozen=True, slots=True)
class ScenarioResults:
    """The figures of the scenarios that ran, by the report's names for them."""

    scenarios: dict[str, Any]
    # Whether the real server's metrics endpoint answered (None: the zero scenario did not run).
    metrics_serving: bool | None


def run_scenarios(
    rig: Rig, sizes: Sizes, only: Sequence[str], *, delay_ms: float, threadpool_workers: int
) -> ScenarioResults:
    """The scenarios named in `only`, in their fixed order; start-up times every real server."""
    startups: list[float] = []
    results: dict[str, Any] = {}
    metrics_serving = None
    if "zero" in only:
        zero = scenario_upstream_0ms(rig, sizes, startups)
        results["upstream_0ms_c64"], results["upstream_0ms_c1"] = zero["c64"], zero["c1"]
        metrics_serving = zero["metrics_serving"]
    if "slow" in only:
        results["upstream_slow_c256"] = scenario_upstream_slow(
            rig, sizes, startups, delay_ms=delay_ms, threadpool_workers=threadpool_workers
        )
    if "memory" in only:
        results["memory"] = scenario_memory(rig, sizes, startups)
    if "production" in only:
        results["production"] = scenario_production(rig, sizes, startups)
    if "startup" in only:
        results["startup"] = scenario_startup(rig, sizes, startups)
    return ScenarioResults(results, metrics_serving)

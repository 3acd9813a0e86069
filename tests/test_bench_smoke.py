"""The benchmarks' CI-sized runs (issue 6 and the worst inputs): they run and print every
figure, never judging one; and the real server's config fails the benchmark on any key refused."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

REPO: Final = Path(__file__).resolve().parents[1]
BENCH: Final = REPO / "bench" / "run.py"
WORST_INPUTS: Final = REPO / "bench" / "worst_inputs.py"
BENCH_DIR: Final = REPO / "bench"
# The smoke run takes seconds; this only stops a hung run from holding CI.
SMOKE_TIMEOUT_S: Final = 100
SERVER_FIGURES: Final = (
    "calls_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_s_per_1k_calls",
    "peak_rss_mb",
)
MEMORY_FIGURES: Final = (
    "rss_mb_at_half",
    "rss_mb_at_end",
    "growth_mb",
    "peak_rss_mb",
    "calls_per_s",
    "cpu_s_per_1k_calls",
)
REDIS_WORK_FIGURES: Final = (
    "calls",
    "round_trips_per_call",
    "socket_reads_per_call",
    "commands_per_call",
    "redis_cpu_ms_per_call",
    "server_cpu_ms_per_call",
)
# issue 6's 7 (its growth bound with a day of state retired by issue 14), and issue 14's 12.
TARGET_COUNT: Final = 19


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _assert_figures(section: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        assert _is_number(section.get(name)), f"{where}.{name} is {section.get(name)!r}"


def _smoke_report(script: Path) -> Any:
    """The JSON a script prints with --smoke (it must exit 0)."""
    completed = subprocess.run(
        [sys.executable, str(script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        cwd=REPO,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


def test_bench_smoke_run_prints_every_figure_of_every_scenario() -> None:
    report = _smoke_report(BENCH)
    scenarios = report["scenarios"]

    servers_of = {
        "upstream_0ms_c64": ("real", "bare"),
        "upstream_0ms_c1": ("real", "bare"),
        "upstream_slow_c256": ("real", "bare", "threadpool"),
    }
    for scenario, servers in servers_of.items():
        for server in servers:
            figures = scenarios[scenario]["servers"][server]
            _assert_figures(figures, SERVER_FIGURES, f"{scenario}.{server}")
            assert figures["calls"] > 0
        for server in (server for server in servers if server != "bare"):
            ratios = scenarios[scenario]["ratios_to_bare"][server]
            _assert_figures(ratios, SERVER_FIGURES, f"{scenario}.ratios_to_bare.{server}")
    assert _is_number(scenarios["upstream_0ms_c1"]["real_p50_minus_bare_p50_ms"])
    assert _is_number(scenarios["upstream_slow_c256"]["real_vs_threadpool_calls_per_s"])

    memory = scenarios["memory"]
    _assert_figures(memory, (*MEMORY_FIGURES, "retained_bytes_per_call"), "memory")
    assert memory["log_rpc_events"] == memory["calls"]  # JSON logs were on, one event per RPC
    leak_check = memory["leak_check"]
    _assert_figures(leak_check, (*MEMORY_FIGURES, "state_kept_s"), "memory.leak_check")
    assert leak_check["log_rpc_events"] == memory["calls"]

    production = scenarios["production"]
    for concurrency in ("c64", "c1"):
        for server in ("bare", "redis", "memory"):
            figures = production[concurrency]["servers"][server]
            _assert_figures(figures, SERVER_FIGURES, f"production.{concurrency}.{server}")
            assert figures["calls"] > 0
        for server in ("redis", "memory"):
            ratios = production[concurrency]["ratios_to_bare"][server]
            _assert_figures(ratios, SERVER_FIGURES, f"production.{concurrency}.ratios.{server}")
    verifications = production["verifications"]
    for rpc in ("start_verification", "check_verification"):
        figures = verifications["servers"][rpc]
        _assert_figures(figures, SERVER_FIGURES, f"production.verifications.{rpc}")
        assert _is_number(verifications["calls_per_s_vs_bare_send_code"][rpc])
    for job in ("send_code", "send_code_replay", "start_verification", "check_verification"):
        work = production["redis_work"][job]
        _assert_figures(work, REDIS_WORK_FIGURES, f"production.redis_work.{job}")
        assert work["by_command_per_call"], job  # Redis counted the real server's commands

    startup = scenarios["startup"]
    _assert_figures(startup, ("median_s", "max_s"), "startup")
    assert startup["runs_s"]
    assert all(_is_number(seconds) for seconds in startup["runs_s"])

    targets = report["targets"]
    assert len(targets) == TARGET_COUNT
    for target in targets:
        assert _is_number(target["value"]), target
        assert _is_number(target["bound"]), target
        assert isinstance(target["pass"], bool)


def test_worst_inputs_smoke_run_prints_a_figure_per_parser_and_size() -> None:
    report = _smoke_report(WORST_INPUTS)
    sizes = [str(size) for size in report["sizes"]]
    assert len(sizes) >= 2
    assert report["parsers"]
    for entry in report["parsers"]:
        assert entry["parser"]
        assert entry["worst_input"]
        assert list(entry["cpu_us_per_call"]) == sizes
        _assert_figures(entry["cpu_us_per_call"], tuple(sizes), entry["parser"])
        assert _is_number(entry["growth"]), entry


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.metrics_port", "127.0.0.1:9464"),  # a key the server does not know: renamed
        ("limits.per_phone", ["5 an hour"]),  # a value the server refuses
        ("server.grace_period_seconds", 1.0),  # valid, but the server would warn at start
    ],
)
def test_bench_config_fails_on_a_key_the_real_server_refuses(
    key: str, value: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the bench's modules import each other so
    from progress import BenchError
    from real_server_config import production_features, real_server_keys, write_config

    features = production_features(
        metrics_listen="127.0.0.1:50062", per_phone=["1/60s"], idempotency_ttl_s=60
    )
    keys = real_server_keys(
        listen="127.0.0.1:50061", upstream_url="http://127.0.0.1:50063", features=features
    )
    write_config(tmp_path / "meant.toml", keys, {})  # the benchmark's own keys are all taken

    with pytest.raises(BenchError, match=rf"{re.escape(key)}: "):
        write_config(tmp_path / "changed.toml", {**keys, key: value}, {})

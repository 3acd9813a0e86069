"""How many calls each scenario makes: the full run's sizes, and the smoke run's (seconds, CI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


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
    # production: StartVerifications per round (and their warm-up); each is then checked
    # max_checks - 1 times, so the CheckVerifications are that many times more.
    verify_starts: int
    verify_warmup: int
    # production: the calls of each job whose Redis work is counted.
    round_trip_calls: int


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
    verify_starts=2_500,
    verify_warmup=250,
    round_trip_calls=2_000,
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
    verify_starts=50,
    verify_warmup=10,
    round_trip_calls=50,
)

"""The production scenario: the real server in the shape production runs it, on Redis and on
memory, beside the bare proxy; its verifications; and what each call costs Redis.

One redis-server of the run's own; upstream 0 ms; both real servers with auth (the load
generator's bearer token), per-phone limits at the defaults, a request_id per call, and
verifications on. Rounds alternate the subjects (the three servers' SendCode, then the
Redis-backed server's verifications: starts, then checks of those verifications), at C=64 then
SendCode at C=1; each keeps its median round. Then, on the warm Redis-backed server, jobs whose
Redis work is counted from Redis's own counters (redis_server.py): SendCodes, the same again
(replays), StartVerifications, CheckVerifications.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from load_generator import (
    CHECK_VERIFICATION,
    SEND_CODE,
    START_VERIFICATION,
    median_figures,
    ratios,
)
from proc_stats import peak_rss_mb
from progress import log
from redis_server import RedisServer, RedisStats, start_redis
from rig import Rig
from servers import RealServer, Server
from sizes import Sizes

from yunpian_sms_server.config import DEFAULT_VERIFY_CODE_LENGTH, DEFAULT_VERIFY_MAX_CHECKS

# Each verification is checked this often with a wrong code: every check answers OK (approved
# = false); one more would end it (MAX_ATTEMPTS_REACHED) and the next be refused.
CHECKS_PER_VERIFICATION: Final = DEFAULT_VERIFY_MAX_CHECKS - 1
C64: Final = 64
# The names the load generator keeps verifications under: each round's, the counted job's.
ROUND_VERIFICATIONS: Final = "production-round-{}"
COUNTED_VERIFICATIONS: Final = "production-counted"
# The figures' names of the Redis-backed server's verification jobs.
START: Final = "start_verification"
CHECK: Final = "check_verification"

# One subject of a round: runs its job(s) and answers them by figure name.
Subject = Callable[[int], dict[str, dict[str, Any]]]


def _alternating(subjects: Sequence[Subject], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Runs every subject once per round, in the reverse order every other round; the answers
    of each figure name, round by round."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(rounds):
        order = subjects if round_index % 2 == 0 else list(reversed(subjects))
        for subject in order:
            for name, answer in subject(round_index).items():
                answers.setdefault(name, []).append(answer)
    return answers


class _Production:
    """The scenario's servers and the jobs it sends them."""

    def __init__(
        self,
        rig: Rig,
        sizes: Sizes,
        redis: RedisServer,
        on_redis: RealServer,
        replica: RealServer,
    ) -> None:
        self.rig = rig
        self.sizes = sizes
        self.redis = redis
        self.on_redis = on_redis
        self.replica = replica  # a second Redis-backed server: another replica, same Redis

    def job(self, server: Server, **options: Any) -> dict[str, Any]:
        """One job against `server`, each call with a request_id (whatever the run's options);
        against the Redis-backed server, the redis-server's CPU is measured with theirs."""
        store_pid = self.redis.pid if server in (self.on_redis, self.replica) else 0
        return self.rig.load.run_job(server, request_ids=True, store_pid=store_pid, **options)

    def send_code(self, server: Server, *, concurrency: int, calls: int, warmup: int) -> Subject:
        def run(_: int) -> dict[str, dict[str, Any]]:
            return {
                server.name: self.job(server, calls=calls, concurrency=concurrency, warmup=warmup)
            }

        return run

    def verifications(self, round_index: int) -> dict[str, dict[str, Any]]:
        """Starts verifications on the Redis-backed server, then checks them all with wrong
        codes, CHECKS_PER_VERIFICATION times each."""
        starts, warmup = self.sizes.verify_starts, self.sizes.verify_warmup
        kept = ROUND_VERIFICATIONS.format(round_index)
        start = self.start_verifications(kept, calls=starts, warmup=warmup)
        check = self.check_verifications(
            kept,
            calls=starts * CHECKS_PER_VERIFICATION,
            warmup=warmup * CHECKS_PER_VERIFICATION,
        )
        return {START: start, CHECK: check}

    def start_verifications(self, kept: str, *, calls: int, warmup: int = 0) -> dict[str, Any]:
        return self.job(
            self.on_redis,
            calls=calls,
            concurrency=C64,
            warmup=warmup,
            rpc=START_VERIFICATION,
            keep_verifications=kept,
        )

    def check_verifications(self, kept: str, *, calls: int, warmup: int = 0) -> dict[str, Any]:
        return self.job(
            self.on_redis,
            calls=calls,
            concurrency=C64,
            warmup=warmup,
            rpc=CHECK_VERIFICATION,
            verifications=kept,
            code_length=DEFAULT_VERIFY_CODE_LENGTH,
        )

    def redis_work(self) -> dict[str, Any]:
        """Redis's own count of what each kind of call costs it, on the warm server: a job of
        SendCodes, the same calls again at the other replica (replays: the replica that sent
        answers a repeat within seconds from its own memory, without Redis, so production's
        costly replay is the one at another replica), StartVerifications, then one check of
        each of those verifications; no warm-up, so every request counted is of the calls
        counted."""
        calls = self.sizes.round_trip_calls
        stats = RedisStats(self.redis)
        try:
            work: dict[str, Any] = {}

            def counted(name: str, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
                before = stats.read()
                answer = job()
                work[name] = {
                    **stats.work_since(before, answer["calls"]).as_figures(),
                    # CPU seconds per 1,000 calls are milliseconds per call.
                    "redis_cpu_ms_per_call": answer["store_cpu_s_per_1k_calls"],
                    "server_cpu_ms_per_call": answer["server_cpu_s_per_1k_calls"],
                }
                return answer

            sent = counted(
                "send_code", lambda: self.job(self.on_redis, calls=calls, concurrency=C64)
            )
            counted(
                "send_code_replay",
                lambda: self.job(self.replica, calls=calls, concurrency=C64, replay=sent),
            )
            counted(START, lambda: self.start_verifications(COUNTED_VERIFICATIONS, calls=calls))
            counted(CHECK, lambda: self.check_verifications(COUNTED_VERIFICATIONS, calls=calls))
        finally:
            stats.close()
        for name, figures in work.items():
            log(
                f"  redis work of {name}: {figures['round_trips_per_call']:.2f} round trips, "
                f"{figures['commands_per_call']:.1f} commands, "
                f"{figures['redis_cpu_ms_per_call']:.3f} ms of Redis CPU per call"
            )
        return work


def scenario_production(rig: Rig, sizes: Sizes, startups: list[float]) -> dict[str, Any]:
    """The production scenario (see the module's docstring) and its figures."""
    log("production: real server on Redis and on memory vs bare proxy, upstream 0 ms")
    redis = start_redis(rig.processes)
    upstream = rig.servers.start_upstream(0)
    on_redis = rig.servers.start_real(upstream, label="redis", store_url=redis.url, verify=True)
    on_memory = rig.servers.start_real(upstream, label="memory", verify=True)
    replica = rig.servers.start_real(
        upstream, label="redis-replica", store_url=redis.url, verify=True
    )
    startups += [on_redis.startup_s, on_memory.startup_s, replica.startup_s]
    bare = rig.servers.start_bare(upstream)
    servers = (bare, on_redis, on_memory)
    scenario = _Production(rig, sizes, redis, on_redis, replica)

    log("production, C=64: SendCode on each server; StartVerification, CheckVerification on redis")
    c64_subjects = [
        scenario.send_code(server, concurrency=C64, calls=sizes.c64_calls, warmup=sizes.c64_warmup)
        for server in servers
    ]
    c64 = _alternating([*c64_subjects, scenario.verifications], sizes.rounds)
    log("production, C=1: SendCode on each server")
    c1_subjects = [
        scenario.send_code(server, concurrency=1, calls=sizes.c1_calls, warmup=sizes.c1_warmup)
        for server in servers
    ]
    c1 = _alternating(c1_subjects, sizes.rounds)
    log("production: Redis's work per call, counted on the Redis-backed server")
    redis_work = scenario.redis_work()

    def by_calls_per_s(run: dict[str, Any]) -> float:
        return float(run["calls_per_s"])

    def by_p50(run: dict[str, Any]) -> float:
        return float(run["p50_ms"])

    sends = {
        concurrency: {
            server.name: median_figures(answers[server.name], pick, server.pid)
            for server in servers
        }
        for concurrency, answers, pick in ((64, c64, by_calls_per_s), (1, c1, by_p50))
    }
    verifications = {
        name: median_figures(c64[name], by_calls_per_s, on_redis.pid) for name in (START, CHECK)
    }
    bare_calls_per_s = sends[64]["bare"]["calls_per_s"]
    redis_figures = {
        "url": redis.url,
        "peak_rss_mb": peak_rss_mb(redis.pid),
    }
    for server in (*servers, replica):
        rig.servers.stop(server)
    rig.processes.stop(redis.process)
    return {
        "upstream_delay_ms": 0,
        "store": redis_figures,
        **{
            f"c{concurrency}": {
                "concurrency": concurrency,
                "rpc": SEND_CODE,
                "servers": figures,
                "ratios_to_bare": {
                    name: ratios(figures[name], figures["bare"]) for name in ("redis", "memory")
                },
            }
            for concurrency, figures in sends.items()
        },
        "verifications": {
            "server": "redis",
            "concurrency": C64,
            "checks_per_verification": CHECKS_PER_VERIFICATION,
            "checks_approved": sum(answer["approved"] for answer in c64[CHECK]),
            "servers": verifications,
            "calls_per_s_vs_bare_send_code": {
                name: figures["calls_per_s"] / bare_calls_per_s
                for name, figures in verifications.items()
            },
        },
        "redis_work": redis_work,
    }

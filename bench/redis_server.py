"""The redis-server a run starts for the real server's shared store, and what Redis itself counts
of the work the real server gives it: requests (round trips) and commands, per call measured.

Redis's `INFO commandstats` counts every command it runs, including those a Lua script runs
(`redis.call`) and those a MULTI ... EXEC transaction queues: an EVALSHA whose script makes four
calls shows as one `evalsha` and four more commands. Every store operation of a send is one
script, so the round trips of a call, the requests it sent and waited for one after the other,
are its scripts (and transactions, if any). The server pipelines the requests of concurrent
calls on one connection, so Redis reads many requests at once: `INFO stats`'
`total_reads_processed` per call (`socket_reads_per_call`) says how many reads they shared.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from processes import HOST, READY_TIMEOUT_S, Processes, free_port
from progress import BenchError

POLL_S: Final = 0.02
IO_TIMEOUT_S: Final = 5.0
# Commands that are each one request whatever they run: scripts and functions.
SCRIPT_COMMANDS: Final = frozenset(
    {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
)
# The command that ends a transaction: MULTI, the commands it queues and EXEC are one request.
TRANSACTION_END: Final = "exec"
# The command the bench itself sends to read the counters (left out of every figure).
OWN_COMMAND: Final = "info"
_READS: Final = "total_reads_processed"
_CMDSTAT: Final = "cmdstat_"


@dataclass(frozen=True, slots=True)
class RedisServer:
    """A running redis-server on loopback, for one run."""

    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid


def start_redis(processes: Processes, name: str = "redis") -> RedisServer:
    """A redis-server of its own on a free loopback port: no persistence, data in the work
    directory; it answers PING when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (`make redis-server` installs it)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(processes.workdir)]
    log_file = processes.workdir / f"{name}.log"
    with open(log_file, "w", encoding="utf-8") as stdout:
        process = processes.spawn(name, argv, stdout=stdout)
    deadline = time.perf_counter() + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with status {process.returncode}: see {log_file}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), POLL_S) as probe:
            probe.sendall(b"PING\r\n")
            if probe.recv(16).startswith(b"+PONG"):
                return RedisServer(process, port)
        time.sleep(POLL_S)
    raise BenchError(f"{name} did not answer PING within {READY_TIMEOUT_S:g} s")


@dataclass(frozen=True, slots=True)
class Counters:
    """Redis's own counters at one moment: reads of client sockets, and per command its calls
    and the microseconds spent running it."""

    reads: int
    calls: Mapping[str, int]
    usec: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RedisWork:
    """What Redis did for `calls` calls of the real server, per call."""

    calls: int
    # Requests that were scripts (EVAL, EVALSHA, FCALL) or transactions (EXEC), per call.
    round_trips_per_call: float
    # Reads of the clients' sockets, per call: pipelined requests share one.
    socket_reads_per_call: float
    # Every command Redis ran, those inside scripts and transactions included, per call.
    commands_per_call: float
    by_command_per_call: dict[str, float]
    # Microseconds Redis spent running each command (commandstats' usec), per call. A script's
    # (or EXEC's) time includes that of the commands it ran, which are listed too.
    usec_by_command_per_call: dict[str, float]

    def as_figures(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "round_trips_per_call": self.round_trips_per_call,
            "socket_reads_per_call": self.socket_reads_per_call,
            "commands_per_call": self.commands_per_call,
            "by_command_per_call": self.by_command_per_call,
            "usec_by_command_per_call": self.usec_by_command_per_call,
        }


class RedisStats:
    """One connection to the run's redis-server that reads its counters (`INFO`), kept open so
    that reading them adds exactly one request and one `info` call between two readings."""

    def __init__(self, server: RedisServer) -> None:
        self._socket = socket.create_connection((HOST, server.port), IO_TIMEOUT_S)
        self._reader = self._socket.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self._socket.close()

    def read(self) -> Counters:
        """The counters now."""
        self._socket.sendall(b"INFO stats commandstats\r\n")
        header = self._reader.readline()
        if not header.startswith(b"$"):
            raise BenchError(f"redis-server answered INFO with {header[:100]!r}")
        body = self._reader.read(int(header[1:]) + 2).decode()
        reads, calls, usec = -1, {}, {}
        for line in body.splitlines():
            key, sep, value = line.partition(":")
            if key == _READS:
                reads = int(value)
            elif sep and key.startswith(_CMDSTAT):
                stats = dict(part.split("=", 1) for part in value.split(","))
                command = key[len(_CMDSTAT) :]
                calls[command], usec[command] = int(stats["calls"]), int(stats["usec"])
        if reads < 0:
            raise BenchError(f"redis-server's INFO has no {_READS}")
        return Counters(reads, calls, usec)

    def work_since(self, before: Counters, calls: int) -> RedisWork:
        """What Redis did since `before`, per call of the `calls` made meanwhile."""
        after = self.read()
        # The readings themselves: `after`'s request (its read is counted before it runs) and
        # `before`'s `info` call (counted once it has run).
        reads = after.reads - before.reads - 1
        by_command = {
            command: count - before.calls.get(command, 0)
            for command, count in after.calls.items()
            if command != OWN_COMMAND and count > before.calls.get(command, 0)
        }
        requests = sum(
            count
            for command, count in by_command.items()
            if command in SCRIPT_COMMANDS or command == TRANSACTION_END
        )
        per = 1 / calls if calls else 0.0
        return RedisWork(
            calls=calls,
            round_trips_per_call=requests * per,
            socket_reads_per_call=reads * per,
            commands_per_call=sum(by_command.values()) * per,
            by_command_per_call={
                command: count * per for command, count in sorted(by_command.items())
            },
            usec_by_command_per_call={
                command: (after.usec[command] - before.usec.get(command, 0)) * per
                for command in sorted(by_command)
            },
        )

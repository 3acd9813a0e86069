"""Supervision of the run's child processes: spawning them on loopback, reading the port a bench
process reports, and stopping each, or all of them when the run ends or dies."""

from __future__ import annotations

import ctypes
import json
import select
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

from progress import BenchError

BENCH_DIR: Final = Path(__file__).resolve().parent
HOST: Final = "127.0.0.1"
# Bounds on waiting for a process: to print its port (or be SERVING), and to exit.
READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1


def free_port() -> int:
    """A loopback port free right now (the real server is told its port in its config)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def read_line(stream: IO[str], timeout_s: float, what: str) -> str:
    """The next line a child writes, within `timeout_s`: a hung child fails the run."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise BenchError(f"{what}: no answer within {timeout_s:g} s")
    line = stream.readline()
    if not line:
        raise BenchError(f"{what}: the process closed its output")
    return line


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the run dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every process the run starts, each with its stderr in `workdir/NAME.stderr`."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self._started: list[subprocess.Popen[str]] = []

    def spawn(
        self, name: str, argv: Sequence[str], *, stdout: IO[str] | int, stdin: int | None = None
    ) -> subprocess.Popen[str]:
        with open(self.workdir / f"{name}.stderr", "w", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                text=True,
                cwd=BENCH_DIR,
                preexec_fn=_die_with_parent,
            )
        self._started.append(process)
        return process

    def spawn_reporting_port(
        self, name: str, argv: Sequence[str]
    ) -> tuple[subprocess.Popen[str], int]:
        """Starts a bench process that prints `{"port": N}` once it serves."""
        process = self.spawn(name, argv, stdout=subprocess.PIPE)
        assert process.stdout is not None
        try:
            line = read_line(process.stdout, READY_TIMEOUT_S, name)
        except BenchError:
            raise BenchError(f"{name} did not start: {self.stderr_tail(name)}") from None
        return process, int(json.loads(line)["port"])

    def stderr_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.stderr"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return text.strip()[-2000:] or "(nothing on stderr)"

    def stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for process in reversed(self._started):
            self.stop(process)

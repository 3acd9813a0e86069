"""What a benchmark run says while it goes: progress lines on stderr (stdout carries only the
JSON), and BenchError, the failure that ends the run with one such line and exit status 1."""

from __future__ import annotations

import sys


class BenchError(Exception):
    """A process failed, a measurement could not be made, or the real server refused its config."""


def log(message: str) -> None:
    """One line of progress, on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)

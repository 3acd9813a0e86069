"""CPU per call of each parser of caller or upstream text on its worst input found, by size.

    .venv/bin/python bench/worst_inputs.py            # a few seconds; JSON on stdout
    .venv/bin/python bench/worst_inputs.py --smoke    # tiny budget per figure: under a second

Each figure is the median over rounds of CPU time (this thread's) per call, in microseconds,
at each size of input; `growth` is the figure at the largest size over the one at the smallest,
so linear growth shows as about the ratio of the sizes. The closest-template search and the
sandbox's matching are bounded by design (they compare, scan and step at most a fixed amount),
so past their caps they stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from yunpian_sms_server.errors import ServiceError
from yunpian_sms_server.phone import mask_numbers_in_text, parse_phone
from yunpian_sms_server.sandbox.template_matching import (
    MAX_VARIABLES,
    VALUE_MAX_LENGTH,
    MatchBudget,
    MatchBudgetError,
    TemplatePattern,
)
from yunpian_sms_server.service import check_request_id
from yunpian_sms_server.templates import local_problems, strip_signature
from yunpian_sms_server.text_diff import SCANNED_CHARS, closest, first_difference

SIZES: Final = (500, 1000, 2000)
# CPU spent on each figure (rounds of calls); the smoke run spends a tenth.
FIGURE_BUDGET_S: Final = 0.1
SMOKE_FIGURE_BUDGET_S: Final = 0.01
ROUNDS: Final = 5
# Candidates of the closest-template search with repeated characters (difflib's worst).
ALTERNATING_CANDIDATES: Final = 20

Call = Callable[[], object]


@dataclass(frozen=True)
class Parser:
    """One parser, and its worst input found, built at a given size."""

    name: str
    worst_input: str
    make_call: Callable[[int], Call]


def _ideographs(count: int) -> list[str]:
    return [chr(0x4E00 + offset) for offset in range(count)]


def _search(ours: str, candidates: Sequence[str]) -> Call:
    def call() -> object:
        index = closest(ours, candidates)
        return None if index is None else first_difference(ours, candidates[index])

    return call


def _alternating_search(size: int) -> Call:
    return _search("a" * size, ["ba" * (size // 2)] * ALTERNATING_CANDIDATES)


def _shuffled_search(size: int) -> Call:
    chars = _ideographs(size)
    shuffles = []
    for seed in range(SCANNED_CHARS // size + 1):
        shuffled = chars[:]
        random.Random(seed).shuffle(shuffled)
        shuffles.append("".join(shuffled))
    return _search("".join(chars), shuffles)


def _sandbox_match(size: int) -> Call:
    # Touching variables against letters half as many as they can take, so that the most ways to
    # split them are open, and a character that spoils every one at the end: the search runs
    # until its step budget is spent. A literal start makes up the size.
    letters = MAX_VARIABLES * VALUE_MAX_LENGTH // 2
    start = "x" * (size - letters - 1)
    variables = "".join(f"#v{n}#" for n in range(MAX_VARIABLES))
    pattern = TemplatePattern.parse(start + variables + "!")
    text = start + "a" * letters + "?"

    def call() -> object:
        with contextlib.suppress(MatchBudgetError):
            return pattern.fullmatch(text, 0, MatchBudget())
        return None

    return call


def _refused(check: Callable[[str], object], text: str) -> Call:
    def call() -> object:
        with contextlib.suppress(ServiceError):
            return check(text)
        return None

    return call


PARSERS: Final = (
    Parser(
        "templates.local_problems",
        '"{{" then spaces (cubic before)',
        lambda size: lambda: local_problems("{{" + " " * (size - 2)),
    ),
    Parser(
        "templates.local_problems",
        '"{{x}}" repeated (most placeholders)',
        lambda size: lambda: local_problems("{{x}}" * (size // 5)),
    ),
    Parser(
        "templates.strip_signature",
        'spaces then an unclosed "【"',
        lambda size: lambda: strip_signature(" " * (size - 1) + "【"),
    ),
    Parser(
        "text_diff.closest + first_difference",
        '"a"s against 20 templates of "ba"s (difflib took minutes)',
        _alternating_search,
    ),
    Parser(
        "text_diff.closest + first_difference",
        "distinct characters against shuffles filling the scan",
        _shuffled_search,
    ),
    Parser(
        "sandbox.template_matching.TemplatePattern.fullmatch",
        f"a literal, {MAX_VARIABLES} touching variables, letters and a spoiler (budget-bound)",
        _sandbox_match,
    ),
    Parser(
        "phone.mask_numbers_in_text",
        '"+" and six digits repeated (a near-number every 7 characters)',
        lambda size: lambda: mask_numbers_in_text("+123456" * (size // 7)),
    ),
    Parser(
        "phone.parse_phone",
        "digits (refused by length before any pattern)",
        lambda size: _refused(parse_phone, "1" * size),
    ),
    Parser(
        "service.check_request_id",
        "printable ASCII with a control character at the end",
        lambda size: _refused(check_request_id, "x" * (size - 1) + "\x00"),
    ),
)


def cpu_per_call_us(call: Call, budget_s: float) -> float:
    """Median CPU microseconds per call over ROUNDS rounds, each sized to budget_s / ROUNDS."""
    started = time.thread_time()
    call()
    once = max(time.thread_time() - started, 1e-7)
    repeats = max(1, int(budget_s / ROUNDS / once))
    rounds = []
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(repeats):
            call()
        rounds.append((time.thread_time() - started) / repeats)
    return round(statistics.median(rounds) * 1e6, 2)


def measure(parsers: Sequence[Parser], sizes: Sequence[int], budget_s: float) -> list[object]:
    """One entry per parser: its figures by size and their growth."""
    report: list[object] = []
    for parser in parsers:
        figures: Mapping[str, float] = {
            str(size): cpu_per_call_us(parser.make_call(size), budget_s) for size in sizes
        }
        smallest, largest = figures[str(sizes[0])], figures[str(sizes[-1])]
        report.append(
            {
                "parser": parser.name,
                "worst_input": parser.worst_input,
                "cpu_us_per_call": figures,
                "growth": round(largest / smallest, 2) if smallest else None,
            }
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--smoke", action="store_true", help="a tiny budget per figure")
    options = arguments.parse_args(argv)
    budget_s = SMOKE_FIGURE_BUDGET_S if options.smoke else FIGURE_BUDGET_S
    report = {
        "sizes": list(SIZES),
        "size_ratio": SIZES[-1] / SIZES[0],
        "parsers": measure(PARSERS, SIZES, budget_s),
    }
    json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How alike two texts are and where they first differ, in time bounded by their length.

ValidateTemplate names the account template closest to a caller's text and the first difference
between them. difflib's SequenceMatcher, the obvious tool, is cubic at worst (2,000 "a"s against
"ba" repeated took minutes), so similarity here is the longest common subsequence, computed with
one big-integer step per character, and difflib only ever sees a short window.
"""

from __future__ import annotations

import difflib
import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Final

# Characters of each text that similarity compares: ValidateTemplate's cap on a caller's content.
# A longer text (an account template; YunPian sends at most 500 characters) is judged by its start.
COMPARED_CHARS: Final = 2000
# Candidates whose similarity is computed in full (~1 ms each at most): the best by a cheap
# upper bound of it.
SHORTLIST: Final = 10
# Characters of candidates that one search reads at most (~0.3 µs each): fifty templates of 500
# characters, YunPian's longest text. Candidates past it are left out (accounts hold a few dozen
# short templates; an upstream answer of any size must not stall the server).
SCANNED_CHARS: Final = 25_000
# Characters past the common start and end that difflib sees to describe the first difference:
# enough for a quote of it and for the texts to agree again after it.
DIFFERENCE_WINDOW: Final = 32


@dataclass(frozen=True, slots=True)
class Difference:
    """The first place two texts differ: at index `at`, `ours` stands where `theirs` does.

    Either side may be empty: text the other one lacks.
    """

    at: int
    ours: str
    theirs: str


def common_subsequence_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two texts (bit-parallel, Hyyrö 2004).

    One big-integer step per character of `a`, on integers of len(b) bits.
    """
    positions: dict[str, int] = {}
    for index, char in enumerate(b):
        positions[char] = positions.get(char, 0) | (1 << index)
    all_ones = (1 << len(b)) - 1
    row = all_ones  # a zero bit per matched character of b
    for char in a:
        matched = positions.get(char)
        if matched:
            low = row & matched
            row = ((row + low) | (row - low)) & all_ones
    return len(b) - row.bit_count()


def similarity(a: str, b: str) -> float:
    """2 × the longest common subsequence / the total length, from 0 to 1 (difflib's scale)."""
    a, b = a[:COMPARED_CHARS], b[:COMPARED_CHARS]
    total = len(a) + len(b)
    return 2.0 * common_subsequence_length(a, b) / total if total else 1.0


def _shared_characters(ours: Counter[str], theirs: Counter[str]) -> int:
    small, large = (ours, theirs) if len(ours) <= len(theirs) else (theirs, ours)
    # Σ min(count here, count there), in map()s rather than a generator: a fifth less time.
    return sum(map(min, small.values(), map(large.get, small, repeat(0))))


def closest(text: str, candidates: Sequence[str]) -> int | None:
    """The index of the candidate most similar to `text`; None when there are none.

    Characters shared regardless of order bound the similarity from above (difflib's
    `quick_ratio`) in linear time; only the SHORTLIST best by that bound are compared in full,
    best first, until the bound cannot beat what was found. Among equally similar candidates the
    one with the higher bound wins, then the one listed first. Only the candidates within the
    first SCANNED_CHARS characters are searched (at least one).
    """
    text = text[:COMPARED_CHARS]
    counted = Counter(text)
    bounds: list[tuple[float, int]] = []
    scanned = 0
    for index, candidate in enumerate(candidates):
        start = candidate[:COMPARED_CHARS]
        scanned += len(start)
        if scanned > SCANNED_CHARS and bounds:
            break
        total = len(text) + len(start)
        shared = _shared_characters(counted, Counter(start))
        bounds.append((2.0 * shared / total if total else 1.0, -index))
    best: tuple[float, int] | None = None
    for bound, negated in heapq.nlargest(SHORTLIST, bounds):
        if best is not None and bound <= best[0]:
            break
        ratio = similarity(text, candidates[-negated])
        if best is None or ratio > best[0]:
            best = (ratio, -negated)
    return None if best is None else best[1]


def _common_prefix_length(a: str, b: str) -> int:
    length = 0
    for mine, theirs in zip(a, b, strict=False):
        if mine != theirs:
            break
        length += 1
    return length


def first_difference(ours: str, theirs: str) -> Difference | None:
    """Where two texts first differ; None when they are equal.

    The common start and end are skipped in linear time; difflib then describes the first change
    within the next DIFFERENCE_WINDOW characters of what lies between.
    """
    if ours == theirs:
        return None
    start = _common_prefix_length(ours, theirs)
    ours_rest, theirs_rest = ours[start:], theirs[start:]
    end = _common_prefix_length(ours_rest[::-1], theirs_rest[::-1])
    ours_middle = ours_rest[: len(ours_rest) - end][:DIFFERENCE_WINDOW]
    theirs_middle = theirs_rest[: len(theirs_rest) - end][:DIFFERENCE_WINDOW]
    matcher = difflib.SequenceMatcher(None, ours_middle, theirs_middle, autojunk=False)
    _, i1, i2, j1, j2 = next(op for op in matcher.get_opcodes() if op[0] != "equal")
    return Difference(start + i1, ours_middle[i1:i2], theirs_middle[j1:j2])

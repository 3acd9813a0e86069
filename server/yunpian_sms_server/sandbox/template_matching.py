"""How a sent text matches a template body with `#name#` variables, in time linear in the text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

# YunPian takes 1-16 ASCII letters and digits for a variable (its documented `#code#` rule).
VALUE_MIN_LENGTH: Final = 1
VALUE_MAX_LENGTH: Final = 16
VALUE_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# Variables one template may use (each use counts): YunPian's have a few; more would only widen
# the search.
MAX_VARIABLES: Final = 32
# Steps the matches of one request may take together (~0.2 µs each; a step is a state visited or
# queued, or a value looked up): a plain template takes a few, so a thousand of them fit ten times
# over, and a request costs at most ~15 ms.
MAX_MATCH_STEPS: Final = 50_000

_VARIABLE = re.compile(r"#([A-Za-z_][A-Za-z0-9_]*)#")


def variable_count(body: str) -> int:
    """How many `#name#` variables a template uses, a repeated one each time."""
    return sum(1 for _ in _VARIABLE.finditer(body))


class MatchBudgetError(Exception):
    """The matches of one request took more than their budget of steps."""


class MatchBudget:
    """The steps left to the matches of one request."""

    def __init__(self, steps: int = MAX_MATCH_STEPS) -> None:
        self.remaining = steps

    def spend(self, steps: int = 1) -> None:
        """Takes steps; MatchBudgetError when there were not enough left."""
        self.remaining -= steps
        if self.remaining < 0:
            raise MatchBudgetError


# The values taken so far, the latest first: (value, earlier values). Pushing a state shares the
# earlier ones instead of copying them.
_Values: TypeAlias = "tuple[str, _Values] | None"


@dataclass(frozen=True, slots=True)
class _Part:
    literal: str  # text to match as it is; "" for a variable
    slot: int  # the variable's index among the template's names; -1 for a literal
    first: bool  # whether this is the variable's first use (it takes a new value)


@dataclass(frozen=True, slots=True)
class TemplatePattern:
    """A template body (`#name#` variables, no signature) prepared for matching.

    Each variable stands for 1-16 ASCII letters and digits, and a variable used twice must hold
    the same value both times. A regular expression says that in one line, but it backtracks
    exponentially where variables can meet: "#a#x#b#x#c#…" (eight variables) against a text of
    "x"s took 38 s. `fullmatch` tries the same ways round a regular expression would (the longest
    value first) and remembers every (place in the template, place in the text) it has seen fail,
    so it visits each at most once: time linear in the text for a given template. Repeated
    variables add their values to that memory, so one request's matches share a step budget
    (MatchBudget) as a backstop.
    """

    names: tuple[str, ...]
    parts: tuple[_Part, ...]
    # Per part index: the shortest and longest text the parts from there on can match, how many
    # variables have taken a value before it, and which of those the rest still compares (what
    # a failure from there depends on).
    min_rest: tuple[int, ...]
    max_rest: tuple[int, ...]
    bound: tuple[int, ...]
    live: tuple[tuple[int, ...], ...]

    @classmethod
    def parse(cls, body: str) -> TemplatePattern:
        """Splits a template body into literal text and variables."""
        names: list[str] = []
        parts: list[_Part] = []
        position = 0
        for variable in _VARIABLE.finditer(body):
            if variable.start() > position:
                parts.append(_Part(body[position : variable.start()], -1, first=False))
            name = variable.group(1)
            first = name not in names
            if first:
                names.append(name)
            parts.append(_Part("", names.index(name), first=first))
            position = variable.end()
        if position < len(body):
            parts.append(_Part(body[position:], -1, first=False))
        min_rest, max_rest = [0], [0]
        for part in reversed(parts):
            if part.slot < 0:
                min_rest.append(min_rest[-1] + len(part.literal))
                max_rest.append(max_rest[-1] + len(part.literal))
            else:
                min_rest.append(min_rest[-1] + VALUE_MIN_LENGTH)
                max_rest.append(max_rest[-1] + VALUE_MAX_LENGTH)
        uses: dict[int, list[int]] = {}
        for index, part in enumerate(parts):
            if part.slot >= 0:
                uses.setdefault(part.slot, []).append(index)
        repeated = {slot: (at[0], at[-1]) for slot, at in uses.items() if len(at) > 1}
        live = [
            tuple(slot for slot, (bound, last) in repeated.items() if bound < index <= last)
            for index in range(len(parts) + 1)
        ]
        bound = [0]
        for part in parts:
            bound.append(bound[-1] + (part.slot >= 0 and part.first))
        return cls(
            names=tuple(names),
            parts=tuple(parts),
            min_rest=tuple(reversed(min_rest)),
            max_rest=tuple(reversed(max_rest)),
            bound=tuple(bound),
            live=tuple(live),
        )

    def fullmatch(self, text: str, start: int, budget: MatchBudget) -> dict[str, str] | None:
        """The variables' values when text[start:] is the template filled in; else None.

        Of several ways to fill it in, the one a backtracking regular expression finds first:
        each variable as long as the rest allows. Raises MatchBudgetError when out of steps.
        """
        end = len(text)
        if not self.min_rest[0] <= end - start <= self.max_rest[0]:
            return None
        failed: set[tuple[int, int, tuple[str, ...]]] = set()
        # Depth first: a state is popped only after every state pushed above it, so one seen
        # again has had its whole search fail (the part index only grows along a path).
        stack: list[tuple[int, int, _Values]] = [(0, start, None)]
        while stack:
            budget.spend()
            index, position, values = stack.pop()
            live = self.live[index]
            known = _recall(values, self.bound[index], live, budget) if live else ()
            key = (index, position, known)
            if key in failed:
                continue
            failed.add(key)
            if index == len(self.parts):  # at the text's end: the lengths left ensured it
                every = range(len(self.names))
                filled = _recall(values, len(every), every, budget)
                return dict(zip(self.names, filled, strict=True))
            part = self.parts[index]
            # What the parts after this one leave for it: text lengths it may end within.
            earliest = end - self.max_rest[index + 1]
            latest = end - self.min_rest[index + 1]
            if part.slot < 0 or not part.first:
                expected = part.literal
                if part.slot >= 0:
                    [expected] = _recall(values, self.bound[index], (part.slot,), budget)
                after = position + len(expected)
                if earliest <= after <= latest and text.startswith(expected, position):
                    stack.append((index + 1, after, values))
                continue
            longest = min(VALUE_MAX_LENGTH, latest - position)
            run = 0
            while run < longest and text[position + run] in VALUE_CHARS:
                run += 1
            # Shortest pushed first, so the longest value is tried first.
            for length in range(max(VALUE_MIN_LENGTH, earliest - position), run + 1):
                budget.spend()
                value = text[position : position + length]
                stack.append((index + 1, position + length, (value, values)))
        return None


def _recall(
    values: _Values, bound: int, slots: Sequence[int], budget: MatchBudget
) -> tuple[str, ...]:
    """The values of these slots (ascending) from the list of the `bound` values taken so far.

    Walking the list costs a step per value passed.
    """
    if not slots:
        return ()
    budget.spend(bound - slots[0])
    found = []
    wanted = iter(reversed(slots))
    slot = next(wanted, -1)
    for at in range(bound - 1, -1, -1):
        if values is None:  # pragma: no cover - `bound` values were taken
            break
        value, values = values
        if at == slot:
            found.append(value)
            slot = next(wanted, -1)
            if slot < 0:
                break
    return tuple(reversed(found))

"""What a template, a fault or a control request may be given: SandboxInputError and JSON checks."""

from __future__ import annotations

import math
from typing import cast

JsonObject = dict[str, object]


class SandboxInputError(ValueError):
    """A template, fault or control request the sandbox refuses; the message says why."""


def json_object(data: object, what: str) -> JsonObject:
    """The data as a JSON object; SandboxInputError names `what` it should have been."""
    if not isinstance(data, dict):
        raise SandboxInputError(f"a {what} must be a JSON object")
    return cast(JsonObject, data)


def reject_unknown_keys(obj: JsonObject, known: set[str]) -> None:
    """SandboxInputError naming the keys outside `known`, and those allowed."""
    unknown = sorted(set(obj) - known)
    if unknown:
        raise SandboxInputError(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )


def is_int(value: object) -> bool:
    """Whether a JSON value is an integer (JSON's true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether a JSON value is a finite number (not a bool, not NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

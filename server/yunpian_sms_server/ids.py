"""Unique ids for request ids and rate-limit tokens, cheaper than a uuid4 per call.

A random per-process prefix keeps them apart across replicas; a counter within the process.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Final

_PREFIX: Final = secrets.token_hex(8)
_counter = itertools.count()


def new_id() -> str:
    """A 32-character hex id no other call of any replica gets."""
    return f"{_PREFIX}{next(_counter):016x}"

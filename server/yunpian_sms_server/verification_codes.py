"""Verification codes: what a caller may ask us to send, and the codes the service makes itself."""

from __future__ import annotations

import re
import secrets
from typing import Final

from yunpian_sms_server.errors import Reason, invalid_argument

MIN_CODE_LENGTH: Final = 4
MAX_CODE_LENGTH: Final = 10
# YunPian takes 1-16 letters and digits for #code#; ours is the stricter 4-10.
_CODE = re.compile(rf"[0-9A-Za-z]{{{MIN_CODE_LENGTH},{MAX_CODE_LENGTH}}}")


def check_code(code: str) -> None:
    """Raises INVALID_CODE unless the code is 4-10 ASCII letters or digits.

    The message never repeats the code: it is a secret.
    """
    if not _CODE.fullmatch(code):
        raise invalid_argument(
            Reason.INVALID_CODE,
            "code",
            f"The code must be {MIN_CODE_LENGTH} to {MAX_CODE_LENGTH} ASCII letters or digits.",
        )


def new_code(length: int) -> str:
    """A code of `length` digits, every one equally likely (from `secrets`)."""
    return f"{secrets.randbelow(10**length):0{length}d}"


def check_typed_code(code: str, length: int) -> None:
    """Raises INVALID_CODE unless the code is exactly `length` ASCII digits (a code we made)."""
    if len(code) != length or not (code.isascii() and code.isdigit()):
        raise invalid_argument(Reason.INVALID_CODE, "code", f"The code must be {length} digits.")

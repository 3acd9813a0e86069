"""What one RPC did: filled in as it runs; its `rpc` event and its metrics are made of it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final


@dataclass(slots=True)
class RpcRecord:
    """The facts of one RPC, None where it did not get that far.

    The envelope starts it (request id, caller) and writes it out; the servicer fills in what
    the request asked for and how it ended. Never the code, the API key or a whole number.
    """

    request_id: str
    caller: str | None = None
    usage_type: str | None = None
    international: bool | None = None
    phone: str | None = None  # masked: "138****8000"
    idempotency_key: str | None = None  # the request's request_id
    yunpian_code: int | None = None
    message_id: str | None = None
    replayed: bool = False
    # What YunPian billed for the SMS this call sent.
    segments: int | None = None
    fee: str | None = None
    fee_unit: str | None = None
    verification_id: str | None = None
    # What this call did to a verification: started, resent, approved, max_attempts, expired,
    # canceled; and what a check came to: approved, wrong, max_attempts, ended, not_found.
    verification_change: str | None = None
    check_result: str | None = None
    # The RPC's trace (32 hex digits) when tracing is on ([telemetry]), the caller's when it
    # sent a traceparent.
    trace_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """The record as log fields: every key, always, in the order declared.

        What `dataclasses.asdict` gives for it (every value is immutable: nothing to copy), at a
        tenth of its cost: asdict walked and deep-copied each value, ~25 µs of every RPC.
        """
        return dict(zip(_FIELD_NAMES, _field_values(self), strict=True))


_FIELD_NAMES: Final = tuple(field.name for field in fields(RpcRecord))
_field_values: Final = attrgetter(*_FIELD_NAMES)

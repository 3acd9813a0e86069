"""Structured logging: JSON lines in production, the console renderer in a terminal."""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from yunpian_sms_server.rpc_record import RpcRecord

LOG_FORMATS: Final = ("json", "console")
# Keys that would carry a secret or the SMS text; dropped from any event as a last line of defence.
SECRET_KEYS: Final = frozenset({"code", "api_key", "apikey", "text", "sms_text", "authorization"})
# The record of the RPC being handled. grpc.aio runs each RPC in a task of its own, so each RPC
# sees its own, and every event logged while it runs carries its fields (merge_rpc_fields).
_current_record: contextvars.ContextVar[RpcRecord | None] = contextvars.ContextVar(
    "rpc_record", default=None
)


def log_rpc_record(record: RpcRecord | None) -> None:
    """Events logged from now on (in this task) carry the record's fields; None: none."""
    _current_record.set(record)


def merge_rpc_fields(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Puts the current RPC's fields first in the event; the event's own keys win."""
    record = _current_record.get()
    return event if record is None else {**record.fields(), **event}


def drop_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Removes secret-bearing keys, whoever bound them."""
    for key in SECRET_KEYS.intersection(event):
        del event[key]
    return event


def default_format(stream: TextIO) -> str:
    """JSON unless the stream is a terminal."""
    return "console" if stream.isatty() else "json"


def configure_logging(
    log_format: str | None = None, stream: TextIO | None = None, *, cache: bool = True
) -> None:
    """Configures structlog (and the standard library's loggers) for the process.

    `cache=False` lets a later call reconfigure loggers already used (tests do).
    """
    stream = stream if stream is not None else sys.stdout
    log_format = log_format or default_format(stream)
    renderer: structlog.typing.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    structlog.configure(
        processors=[
            merge_rpc_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    # Libraries (aiohttp, grpc) log through the standard library: warnings and worse only.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )

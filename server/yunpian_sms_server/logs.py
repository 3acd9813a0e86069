"""Structured logging: JSON lines in production, the console renderer in a terminal.

The service's own events are structlog's, written to stdout. Everything logged through the
standard library (aiohttp, grpc's Python modules, asyncio, redis, OpenTelemetry's exporter,
Python's warnings) goes to stderr through structlog's ProcessorFormatter: rendered the same way,
with the same `timestamp` and `level` keys (and `logger`, its name), so with JSON every line of
either stream is one JSON object, a traceback included. The level (`--log-level`) applies to
both, except that libraries' info records (the sandbox's access log, ...) show only at debug.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from yunpian_sms_server.rpc_record import RpcRecord

LOG_FORMATS: Final = ("json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL: Final = "info"
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
    if record is None:
        return event
    fields = record.fields()
    fields.update(event)
    return fields


def drop_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Removes secret-bearing keys, whoever bound them."""
    for key in SECRET_KEYS.intersection(event):
        del event[key]
    return event


def drop_none(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Removes keys whose value is None: the console shows what is known, not every field.

    (JSON keeps them: a fixed set of keys is easier to query.)"""
    return {key: value for key, value in event.items() if value is not None}


class ReusedEncoder:
    """`json.dumps` for structlog's JSONRenderer, its encoder made once: given options,
    json.dumps makes a JSONEncoder per event (~1.3 µs of each). The renderer passes the same
    options every time."""

    __slots__ = ("_encoder",)

    def __init__(self) -> None:
        self._encoder: json.JSONEncoder | None = None

    def __call__(self, obj: Any, **options: Any) -> str:
        if self._encoder is None:
            self._encoder = json.JSONEncoder(**options)
        return self._encoder.encode(obj)


def default_format(stream: TextIO) -> str:
    """JSON unless the stream is a terminal."""
    return "console" if stream.isatty() else "json"


class LibraryHandler(logging.StreamHandler[TextIO]):
    """The root logger's handler that configure_logging installs (and replaces when called
    again)."""


def configure_logging(
    log_format: str | None = None,
    stream: TextIO | None = None,
    *,
    level: str = DEFAULT_LOG_LEVEL,
    cache: bool = True,
) -> None:
    """Configures structlog (events to `stream`, stdout by default) and the standard library's
    logging (records to stderr), both in `log_format` at `level` and up (the standard library's
    at warning and up unless `level` is debug).

    `cache=False` lets a later call reconfigure loggers already used (tests do).
    """
    stream = stream if stream is not None else sys.stdout
    log_format = log_format or default_format(stream)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor
    library_renderer: structlog.typing.Processor
    finishing: list[structlog.typing.Processor] = [drop_secrets]
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        library_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        finishing.append(drop_none)
    else:
        renderer = library_renderer = structlog.processors.JSONRenderer(
            serializer=ReusedEncoder(), ensure_ascii=False
        )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            merge_rpc_fields,
            structlog.processors.add_log_level,
            timestamper,
            *finishing,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    handler = LibraryHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                merge_rpc_fields,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *finishing,
                structlog.processors.format_exc_info,
                library_renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold if threshold == logging.DEBUG else max(threshold, logging.WARNING))
    # Python's warnings (DeprecationWarning, ResourceWarning, ...) as records of "py.warnings".
    logging.captureWarnings(True)

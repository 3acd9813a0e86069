"""Prometheus metrics of one server, and the HTTP endpoint that serves them.

Besides the service's own `yunpian_sms_*` metrics, every SmsService RPC is counted under the
names and labels of grpc-ecosystem's go-grpc-prometheus (also used by py-grpc-prometheus and
java-grpc-prometheus), so dashboards and alerts written for any gRPC server work unchanged:
`grpc_server_started_total` by grpc_type, grpc_service and grpc_method,
`grpc_server_handled_total` and `grpc_server_handling_seconds` by those and grpc_code, the code
as Go spells it ("OK", "InvalidArgument", "Canceled"); the histogram's grpc_code (which
go-grpc-prometheus leaves out) tells fast refusals from slow sends, and queries that sum over it
see go-grpc-prometheus's series. The process's CPU, memory and file descriptors
(`process_*`) and the Python version (`python_info`) are in the registry too. The endpoint is
prometheus_client's own: it answers `Accept: application/openmetrics-text` with OpenMetrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics import MetricWrapperBase

from yunpian_sms_server.delivery_state import SentMessage, report_latencies
from yunpian_sms_server.listen_addresses import parse_listen
from yunpian_sms_server.listeners import METRICS_LISTENER, start_tcp_site
from yunpian_sms_server.stores import SavedReports

NAMESPACE: Final = "yunpian_sms"
METRICS_PATH: Final = "/metrics"
# YunPian answers in tens to hundreds of milliseconds; the buckets resolve that range.
UPSTREAM_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0)
# An SMS reaches a phone in seconds, or minutes when it is off; reports can come hours later.
DELIVERY_BUCKETS_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)
# A healthy loop wakes within a millisecond or two; tens of milliseconds already delay every RPC,
# and seconds are a stalled server.
LOOP_LAG_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# go-grpc-prometheus's handling-time buckets (Prometheus's DefBuckets), so that its dashboards'
# quantiles read the same.
GRPC_HANDLING_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The grpc_type label of a unary RPC (all of SmsService's).
GRPC_UNARY: Final = "unary"
# The grpc_code label: gRPC status codes as Go's codes.Code.String() spells them (the names
# go-grpc-prometheus writes), by Python's grpc.StatusCode name.
GRPC_CODE_LABELS: Final = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}
_GRPC_LABELS: Final = ["grpc_type", "grpc_service", "grpc_method"]


class Metrics:
    """Every metric of the service, in a registry of its own: servers can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.rpcs = Counter(
            "rpcs",
            "RPCs answered, by method, gRPC code and caller (empty: not authenticated).",
            ["method", "grpc_code", "caller"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.in_flight = Gauge(
            "rpcs_in_flight", "RPCs being handled now.", ["method"], namespace=NAMESPACE, registry=r
        )
        self.sends = Counter(
            "sends",
            "SendCode outcomes, by usage type, international and outcome (OK or reason).",
            ["usage_type", "international", "outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.yunpian_errors = Counter(
            "yunpian_errors",
            "YunPian error answers, by YunPian code.",
            ["yunpian_code"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "upstream_latency_seconds",
            "Time of each call to YunPian, by API path.",
            ["path"],
            namespace=NAMESPACE,
            registry=r,
            buckets=UPSTREAM_BUCKETS_S,
        )
        self.rate_limited = Counter(
            "rate_limited",
            "Sends refused by a rate limit, by scope (phone, caller, global, yunpian).",
            ["scope"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.replays = Counter(
            "idempotent_replays",
            "SendCode answers replayed from an idempotency record.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.fee = Counter(
            "fee",
            "Fees YunPian charged for sent messages, by currency.",
            ["unit"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.segments = Counter(
            "segments", "SMS segments sent (YunPian's count).", namespace=NAMESPACE, registry=r
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop woke a task that slept a fixed interval: time every RPC "
            "waited for the loop meanwhile.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LOOP_LAG_BUCKETS_S,
        )
        self.verifications = Counter(
            "verifications",
            "Verifications started, resent, approved, expired, max_attempts or canceled, by "
            "usage type.",
            ["usage_type", "event"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.verification_checks = Counter(
            "verification_checks",
            "CheckVerification calls by result: approved, wrong, max_attempts (the wrong code "
            "that used the last check), ended, not_found.",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.delivery_reports = Counter(
            "delivery_reports",
            "Delivery reports saved, by state (DELIVERED, FAILED), and reports that were "
            "dropped (duplicate: the message had one already; unknown: not a message of "
            "this service).",
            ["state"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "delivery_latency_seconds",
            "Time from sending an SMS to the phone receiving it, as its report says.",
            namespace=NAMESPACE,
            registry=r,
            buckets=DELIVERY_BUCKETS_S,
        )
        self.delivery_pulls = Counter(
            "delivery_pulls",
            "Report pulls by result: reports, empty, error, bad_response, store_error.",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.delivery_pushes = Counter(
            "delivery_pushes",
            "Report pushes received, by result: saved, rejected, store_error, wrong_path.",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.store_failures_allowed = Counter(
            "store_failures_allowed",
            "Store failures that store.on_error = allow let through.",
            namespace=NAMESPACE,
            registry=r,
        )
        # go-grpc-prometheus's server metrics (the module's docstring).
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            _GRPC_LABELS,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*_GRPC_LABELS, "grpc_code"],
            registry=r,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            [*_GRPC_LABELS, "grpc_code"],
            registry=r,
            buckets=GRPC_HANDLING_BUCKETS_S,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def add_grpc_methods(self, service: str, methods: Iterable[str]) -> None:
        """Shows every method's gRPC series from the start, at zero, as go-grpc-prometheus's
        InitializeMetrics does (a rate over a method never called is 0, not absent); of the
        handled and handling series, those of code OK (each code's would be 17 per method)."""
        for method in methods:
            self.child(self.grpc_started, GRPC_UNARY, service, method)
            self.child(self.grpc_handling, GRPC_UNARY, service, method, "OK")
            self.child(self.grpc_handled, GRPC_UNARY, service, method, "OK")

    def count_saved_reports(self, saved: SavedReports) -> None:
        """Counts a batch of saved reports by state, and the time each SMS took to arrive."""
        for message in saved.saved:
            self.child(self.delivery_reports, message.state.value).inc()
        for latency in report_latencies(saved.saved):
            self.delivery_latency.observe(max(latency, 0.0))
        if saved.duplicates:
            self.child(self.delivery_reports, "duplicate").inc(saved.duplicates)
        if saved.unknown:
            self.child(self.delivery_reports, "unknown").inc(saved.unknown)

    def count_report_taken_in(self, message: SentMessage) -> None:
        """Counts a report that came before its message was recorded (counted `unknown` then),
        once the message took it in."""
        self.count_saved_reports(SavedReports(saved=(message,)))

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """The metric's child for these label values, remembered: `labels()` costs per call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


async def start_metrics_endpoint(metrics: Metrics, listen: str) -> tuple[web.AppRunner, int]:
    """Serves GET /metrics on HOST:PORT; returns the runner (to clean up) and the bound port.

    Raises ListenError when the address cannot be had.
    """
    app = web.Application()
    app.router.add_get(METRICS_PATH, make_aiohttp_handler(metrics.registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_listen(listen)
    await start_tcp_site(runner, host, port, METRICS_LISTENER)
    return runner, int(runner.addresses[0][1])

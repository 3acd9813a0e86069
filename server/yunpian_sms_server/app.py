"""The server's lifecycle in one place: HTTP session, optional sandbox, gRPC server, shutdown.

With `[templates] verify_on_start`, start-up checks every configured template at YunPian and
health stays NOT_SERVING (logging `template_not_approved` per failing template) until all are
approved; a background task re-checks every `remote_cache_seconds` and then flips to SERVING.

Shutdown: health turns NOT_SERVING and new calls are refused (SHUTTING_DOWN) while the port
stays open for `server.drain_seconds`; then the listener closes and calls in flight have
`server.grace_period_seconds` to finish. Those still running are interrupted and answer with
what they know (an SMS that may have gone out is recorded and answered as `delivery=unknown`)
within SHUTDOWN_ANSWER_MARGIN_S; the server then waits for the records and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import aiohttp
import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.account_templates import ApprovalStatus
from yunpian_sms_server.auth import Authenticator
from yunpian_sms_server.config import (
    Config,
    ConfigError,
    DeliveryConfig,
    TlsConfig,
    YunpianConfig,
    config_warnings,
    exposure_problem,
)
from yunpian_sms_server.delivery_reports import DeliveryReports, ReportPuller
from yunpian_sms_server.delivery_state import KEPT_REPORT_WAITS, SentMessage
from yunpian_sms_server.errors import ServiceError
from yunpian_sms_server.listen_addresses import join_listen, parse_listen
from yunpian_sms_server.listeners import (
    GRPC_LISTENER,
    SANDBOX_LISTENER,
    ListenError,
    listen_error,
    probe_listen,
)
from yunpian_sms_server.loop_lag import LoopLagMonitor
from yunpian_sms_server.metrics import Metrics, start_metrics_endpoint
from yunpian_sms_server.rate_limits import RateLimiter
from yunpian_sms_server.report_endpoint import callback_url, start_report_endpoint
from yunpian_sms_server.rpc_envelope import RpcEnvelope
from yunpian_sms_server.sandbox import (
    DEFAULT_SIGNATURE,
    SANDBOX_API_KEY,
    RunningSandbox,
    Sandbox,
    SandboxTemplate,
    start_sandbox,
)
from yunpian_sms_server.send_protocol import Fingerprints, ReportCollection, SendProtocol
from yunpian_sms_server.service import SmsServicer
from yunpian_sms_server.shutdown import Shutdown
from yunpian_sms_server.stores import Store, StoreUnavailableError, open_store
from yunpian_sms_server.template_check import TemplateChecker
from yunpian_sms_server.templates import configured_templates, yunpian_form
from yunpian_sms_server.verification_state import CodeHasher
from yunpian_sms_server.verifications import Verifications
from yunpian_sms_server.yunpian import YunpianClient, open_session

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is on
    from opentelemetry.sdk.trace.export import SpanExporter

    from yunpian_sms_server.telemetry import Tracing

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["SmsService"].full_name
# The health "service" of liveness probes: SERVING while the process runs, even while the
# server is not ready (templates awaiting approval), so a liveness probe never restarts it then.
LIVENESS_SERVICE: Final = "liveness"
# Where `serve --sandbox` runs its sandbox unless told: any free loopback port.
IN_PROCESS_SANDBOX_LISTEN: Final = "127.0.0.1:0"
# Region list of the sandbox's international templates: every region.
SANDBOX_ALL_REGIONS: Final = "ALL"
# Calls still running at the end of the grace period are interrupted this long before gRPC
# would cut them: time to record what they know and answer with it.
SHUTDOWN_ANSWER_MARGIN_S: Final = 0.5
# The random verification secret of `serve --sandbox`.
SANDBOX_SECRET_BYTES: Final = 32
# How often `serve --sandbox` pulls its sandbox's delivery reports (each is ready 0.5 s after
# its send), unless the config has a [delivery] table of its own.
SANDBOX_PULL_INTERVAL_S: Final = 0.5
# gRPC sets SO_REUSEPORT by default: a second server on a port in use would then share it,
# each process with its own memory store, and a phone number would get twice its limit.
GRPC_SERVER_OPTIONS: Final = (("grpc.so_reuseport", 0),)

_log = structlog.get_logger("yunpian_sms.app")


def sandbox_for(config: Config) -> Sandbox:
    """A sandbox that has approved every template the config names, with its signature."""
    templates: list[SandboxTemplate] = []
    seen: set[tuple[str, bool]] = set()
    book = config.templates
    for international, contents in ((False, book.domestic), (True, book.international)):
        for content in contents.values():
            if (content, international) in seen:
                continue
            seen.add((content, international))
            templates.append(
                SandboxTemplate(
                    tpl_id=len(templates) + 1,
                    content=DEFAULT_SIGNATURE + yunpian_form(content),
                    country_code=SANDBOX_ALL_REGIONS if international else None,
                )
            )
    return Sandbox(config.yunpian.api_key or SANDBOX_API_KEY, templates)


async def serve_sandbox(config: Config, listen: str) -> RunningSandbox:
    """Serves the config's sandbox (sandbox_for) on HOST:PORT.

    Raises ListenError when the address cannot be had: the sandbox knows nothing of the
    server's listeners and lets the OSError through.
    """
    host, port = parse_listen(listen)
    try:
        return await start_sandbox(sandbox_for(config), host, port)
    except OSError as error:
        raise listen_error(join_listen(host, port), SANDBOX_LISTENER, error) from None


def open_yunpian_session(config: YunpianConfig) -> aiohttp.ClientSession:
    """The one HTTP session to YunPian, with the configured timeout."""
    return open_session(config.timeout_seconds)


def report_collection(
    delivery: DeliveryConfig, on_taken_in: Callable[[SentMessage], None]
) -> ReportCollection | None:
    """What the send protocol keeps for delivery reports (None: they are not collected)."""
    if not delivery.enabled:
        return None
    url = ""
    if delivery.mode == "push" and delivery.public_url:
        url = callback_url(delivery.public_url, delivery.path_token)
    keep_s = delivery.report_wait_seconds * KEPT_REPORT_WAITS
    return ReportCollection(keep_s=keep_s, callback_url=url, on_taken_in=on_taken_in)


def sandbox_delivery(delivery: DeliveryConfig) -> DeliveryConfig:
    """The delivery reports of `serve --sandbox`: the config's own when its file has a
    [delivery] table; else pulled from the in-process sandbox every SANDBOX_PULL_INTERVAL_S
    (no token or public URL is needed for pulling)."""
    if delivery.configured:
        return delivery
    return dataclasses.replace(delivery, mode="pull", pull_interval_seconds=SANDBOX_PULL_INTERVAL_S)


def fingerprints_for(config: Config) -> Fingerprints:
    """The request fingerprints' keys: the configured secrets, or (one server with its own
    memory store, whose records die with it) a random one."""
    store = config.store
    secret = store.fingerprint_secret.encode() or secrets.token_bytes(32)
    return Fingerprints(secret, [old.encode() for old in store.previous_fingerprint_secrets])


def yunpian_client(
    session: aiohttp.ClientSession,
    config: YunpianConfig,
    on_latency: Callable[[str, float], None] | None = None,
) -> YunpianClient:
    """A YunPian client on the session, for the configured account and base URL."""
    return YunpianClient(
        session,
        base_url=config.base_url,
        api_key=config.api_key,
        timeout_s=config.timeout_seconds,
        on_latency=on_latency,
    )


def _add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Binds the gRPC port, with TLS (and client certificates) when configured.

    Raises ListenError when the address cannot be had.
    """
    probe_listen(address, GRPC_LISTENER)
    try:
        if tls is None:
            return server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
            require_client_auth=tls.client_ca is not None,
        )
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        # Another process took the port since the probe: probing again names the reason.
        probe_listen(address, GRPC_LISTENER)
        raise ListenError(address, GRPC_LISTENER, "gRPC could not bind it") from None


async def verify_templates(config: Config, checker: TemplateChecker) -> bool:
    """Checks every configured template at YunPian; logs each one that is not approved.

    Returns whether all are approved. A YunPian error (an invalid key, …) is logged once.
    """
    templates = configured_templates(
        config.templates, international_enabled=config.international.enabled
    )
    try:
        results = await checker.check_many([(t.content, t.international) for t in templates])
    except ServiceError as error:
        _log.warning(
            "template_check_failed",
            reason=error.reason.value,
            yunpian_code=error.yunpian_code,
            message=error.message,
        )
        return False
    approved = True
    for template, result in zip(templates, results, strict=True):
        if result.status is ApprovalStatus.APPROVED:
            continue
        approved = False
        _log.warning(
            "template_not_approved",
            usage_type=template.usage_type,
            international=template.international,
            status=result.status.value,
            template_id=result.template_id or None,
            status_reason=result.status_reason or None,
            problems=[problem.reason.value for problem in result.problems],
            why=result.summary(),
        )
    return approved


class SmsServer:
    """A running yunpian-sms server: start it, read its port, stop it."""

    def __init__(self, config: Config, *, span_exporter: SpanExporter | None = None) -> None:
        """`span_exporter`: where spans go, as each ends, instead of [telemetry]'s collector
        (tests: the SDK's InMemorySpanExporter); only with [telemetry] enabled."""
        self.config = config
        self._span_exporter = span_exporter
        self._tracing: Tracing | None = None
        self.port = 0
        self.sandbox: RunningSandbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._shutdown = Shutdown()
        self._sending: SendProtocol | None = None
        self._verifications: Verifications | None = None
        self._checker: TemplateChecker | None = None
        self._store: Store | None = None
        self._verifier: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.metrics_port = 0
        self._loop_lag = LoopLagMonitor(self.metrics.loop_lag.observe)
        self._metrics_runner: web.AppRunner | None = None
        # Delivery reports: pulled by a task, or pushed to an endpoint (whichever is configured).
        self._puller: ReportPuller | None = None
        self._report_runner: web.AppRunner | None = None
        self.report_port = 0

    async def start(
        self,
        *,
        listen: str | None = None,
        sandbox: bool = False,
        sandbox_listen: str = IN_PROCESS_SANDBOX_LISTEN,
    ) -> None:
        """Starts the sandbox (if asked), the HTTP session and the gRPC server; then SERVING.

        When a part fails (ListenError: a port in use), closes the parts already started.
        """
        try:
            await self._start(listen=listen, sandbox=sandbox, sandbox_listen=sandbox_listen)
        except BaseException:
            if self._server is not None:
                await self._server.stop(None)
            await self._close()
            raise

    async def _start(self, *, listen: str | None, sandbox: bool, sandbox_listen: str) -> None:
        config = self.config
        if sandbox:
            self.sandbox = await serve_sandbox(config, sandbox_listen)
            config = dataclasses.replace(
                config,
                yunpian=YunpianConfig(
                    api_key=config.yunpian.api_key or SANDBOX_API_KEY,
                    base_url=self.sandbox.url,
                    timeout_seconds=config.yunpian.timeout_seconds,
                ),
                # Everything runs against the sandbox, verifications too (with a random secret
                # unless the config has one: codes sent before a restart no longer check).
                verify=dataclasses.replace(
                    config.verify,
                    enabled=True,
                    secret=config.verify.secret or secrets.token_hex(SANDBOX_SECRET_BYTES),
                ),
                # Delivery reports too, pulled from the sandbox, unless the config says otherwise.
                delivery=sandbox_delivery(config.delivery),
            )
        if config.telemetry.enabled:
            from yunpian_sms_server.telemetry import Tracing

            self._tracing = Tracing(config.telemetry, SERVICE_NAME, self._span_exporter)
        self._session = open_yunpian_session(config.yunpian)
        if self._tracing is None:
            yunpian = yunpian_client(
                self._session, config.yunpian, on_latency=self._observe_upstream_latency
            )
        else:
            yunpian = self._tracing.yunpian_client(
                self._session, config.yunpian, on_latency=self._observe_upstream_latency
            )
        self._checker = TemplateChecker(
            yunpian, cache_ttl_s=config.template_checks.remote_cache_seconds
        )
        self._store = open_store(config.store.url, config.store.max_connections)
        if self._tracing is not None:
            self._store = self._tracing.store(self._store, config.store.url)
        try:
            await self._store.ping()
        except StoreUnavailableError as error:
            _log.warning("store_unavailable", operation="start", error=str(error))
        delivery = config.delivery
        self._sending = SendProtocol(
            self._store,
            RateLimiter(self._store, config.limits),
            yunpian,
            fingerprints=fingerprints_for(config),
            record_ttl_s=config.store.idempotency_ttl_seconds,
            allow_on_store_error=config.store.on_error == "allow",
            shutdown=self._shutdown,
            on_store_failure_allowed=self.metrics.store_failures_allowed.inc,
            reports=report_collection(delivery, self.metrics.count_report_taken_in),
        )
        reports = None
        if delivery.enabled:
            reports = DeliveryReports(self._store, delivery, self.metrics.count_saved_reports)
        verifications = self._verifications = None
        if config.verify.enabled:
            verify = config.verify
            hasher = CodeHasher(
                verify.secret.encode(), [old.encode() for old in verify.previous_secrets]
            )
            verifications = self._verifications = Verifications(
                self._store, self._sending, verify, hasher, self._shutdown
            )
        servicer = SmsServicer(config, self._sending, self._checker, verifications, reports)
        authenticator = Authenticator(config.auth, required=config.authenticates)
        server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
        envelope = RpcEnvelope(authenticator, self.metrics, self._shutdown, self._tracing)
        envelope.add_service(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = listen or config.server.listen
        exposed = exposure_problem(address, config)
        if exposed is not None:
            raise ConfigError([exposed])
        if not config.authenticates:
            _log.warning(
                "unauthenticated",
                listen=address,
                message="no [auth]: every caller is anonymous and may send any usage type",
            )
        for warning in config_warnings(config):
            _log.warning("config_warning", key=warning.key, message=warning.problem)
        if config.server.metrics_listen:
            self._metrics_runner, self.metrics_port = await start_metrics_endpoint(
                self.metrics, config.server.metrics_listen
            )
        if reports is not None and delivery.mode == "push":
            self._report_runner, self.report_port = await start_report_endpoint(
                reports, delivery.path_token, delivery.listen, self._count_push
            )
        if reports is not None and delivery.mode == "pull":
            self._puller = ReportPuller(self._store, yunpian, reports, delivery, self._count_pull)
            self._puller.start()
        await self._set_health(serving=False)
        await self._health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        # Bound last and started at once: grpc keeps the port of a server never started.
        self._server = server
        self.port = _add_port(server, address, config.server.tls)
        await server.start()
        serving = True
        if config.template_checks.verify_on_start:
            serving = await verify_templates(config, self._checker)
            if not serving:
                self._verifier = asyncio.create_task(
                    self._verify_until_approved(config, self._checker)
                )
        await self._set_health(serving=serving)
        self._loop_lag.start()
        _log.info(
            "serving",
            listen=address,
            port=self.port,
            sandbox=self.sandbox.url if self.sandbox else None,
            yunpian=config.yunpian.base_url,
            health="SERVING" if serving else "NOT_SERVING",
        )

    def _count_pull(self, result: str) -> None:
        self.metrics.child(self.metrics.delivery_pulls, result).inc()

    def _count_push(self, result: str) -> None:
        self.metrics.child(self.metrics.delivery_pushes, result).inc()

    def _observe_upstream_latency(self, path: str, seconds: float) -> None:
        self.metrics.child(self.metrics.upstream_latency, path).observe(seconds)

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def _verify_until_approved(self, config: Config, checker: TemplateChecker) -> None:
        """Re-checks the templates every cache period; SERVING once YunPian approves them all."""
        while True:
            await asyncio.sleep(config.template_checks.remote_cache_seconds)
            try:
                approved = await verify_templates(config, checker)
            except Exception:  # keep re-checking whatever goes wrong once
                _log.exception("template_check_crashed")
                continue
            if approved:
                await self._set_health(serving=True)
                _log.info("templates_approved")
                return

    async def stop(self) -> None:
        """Drains, lets in-flight RPCs finish within the grace period, closes everything."""
        settings = self.config.server
        self._shutdown.draining = True
        if self._puller is not None:
            await self._puller.stop()  # at once: another replica takes the pull over
        if self._verifier is not None:
            self._verifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._verifier
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            if settings.drain_seconds > 0:
                _log.info("draining", drain_seconds=settings.drain_seconds)
                await asyncio.sleep(settings.drain_seconds)
            await self._stop_grpc(settings.grace_period_seconds)
        await self._close()
        _log.info("stopped")

    async def _close(self) -> None:
        """Closes the parts other than the gRPC server, those start got to (after the records
        of calls that outlived their RPC are written)."""
        if self._puller is not None:
            await self._puller.stop()
        if self._sending is not None:
            await self._sending.drain()
        if self._verifications is not None:
            await self._verifications.drain()
        await self._loop_lag.stop()
        if self._report_runner is not None:
            await self._report_runner.cleanup()
        if self._checker is not None:
            await self._checker.close()
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            await self._store.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._tracing is not None:
            # Sends the spans not yet exported: blocking, so off the event loop.
            await asyncio.to_thread(self._tracing.shutdown)
        if self.sandbox is not None:
            await self.sandbox.close()

    async def _stop_grpc(self, grace_s: float) -> None:
        """Closes the listener; interrupts the calls still running when the grace period ends."""
        assert self._server is not None
        _log.info("stopping", grace_period_seconds=grace_s)
        stopping = asyncio.create_task(self._server.stop(grace_s + SHUTDOWN_ANSWER_MARGIN_S))
        done, _ = await asyncio.wait({stopping}, timeout=grace_s)
        if not done and self._shutdown.calls_in_flight:
            interrupted = self._shutdown.interrupt()
            _log.warning("interrupting", calls=interrupted, grace_period_seconds=grace_s)
        await stopping

"""The `yunpian-sms` command: serve, send, verify, status, validate-template, check-config,
sandbox."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import math
import os
import platform
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, Final

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from yunpian.sms.v1 import sms_service_pb2
from yunpian_sms_client import (
    DeliveryState,
    DeliveryStatus,
    SmsClient,
    SmsError,
    TemplateStatus,
    Verification,
    VerificationStatus,
)
from yunpian_sms_server.account_templates import ApprovalStatus
from yunpian_sms_server.app import (
    IN_PROCESS_SANDBOX_LISTEN,
    SmsServer,
    open_yunpian_session,
    serve_sandbox,
    yunpian_client,
)
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.config import (
    API_KEY_ENV,
    CONFIG_ENV,
    Config,
    ConfigError,
    config_warnings,
    exposure_problem,
    load_config,
)
from yunpian_sms_server.errors import ServiceError
from yunpian_sms_server.listen_addresses import parse_listen
from yunpian_sms_server.listeners import ListenError
from yunpian_sms_server.logs import DEFAULT_LOG_LEVEL, LOG_FORMATS, LOG_LEVELS, configure_logging
from yunpian_sms_server.stores import url_problem
from yunpian_sms_server.template_check import TemplateCheck, TemplateChecker
from yunpian_sms_server.templates import configured_templates
from yunpian_sms_server.usage_types import USAGE_TYPE_VALUES, usage_type_name

TARGET_ENV: Final = "YUNPIAN_SMS_TARGET"
# The bearer token of the client commands: an environment variable, never an argument.
TOKEN_ENV: Final = "YUNPIAN_SMS_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_SANDBOX_LISTEN: Final = "127.0.0.1:8080"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # an error, a wrong code, an invalid template
EXIT_USAGE: Final = 2  # a bad command line or config file
# The distributions whose versions --version prints: the server (this command) and the SDK its
# client commands call through.
SERVER_DISTRIBUTION: Final = "yunpian-sms"
CLIENT_DISTRIBUTION: Final = "yunpian-sms-client"
# The runtime libraries the generated contract code needs, named by --version for bug reports.
RUNTIME_DISTRIBUTIONS: Final = ("grpcio", "protobuf")
# `serve`'s cyclic-GC thresholds (Python's default: 700, 10, 10): a young-generation pass every
# ~600 RPCs instead of every ~20.
GC_THRESHOLDS: Final = (20_000, 20, 20)


def _add_client_options(command: argparse.ArgumentParser, target_help: str) -> None:
    command.add_argument("--target", help=target_help)
    command.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server (PEM)")
    command.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS (PEM)")
    command.add_argument("--tls-key", type=Path, help="its private key (PEM)")


def _installed_version(distribution: str) -> str:
    """A distribution's version as installed (its metadata, not a source tree)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def version_text() -> str:
    """What --version prints: this command's version, the SDK's, the contract's proto package,
    and the runtime they run on (what a bug report needs)."""
    runtime = ", ".join(f"{name} {_installed_version(name)}" for name in RUNTIME_DISTRIBUTIONS)
    return (
        f"{SERVER_DISTRIBUTION} {_installed_version(SERVER_DISTRIBUTION)} "
        f"({CLIENT_DISTRIBUTION} {_installed_version(CLIENT_DISTRIBUTION)}, "
        f"contract {sms_service_pb2.DESCRIPTOR.package}; "
        f"Python {platform.python_version()}, {runtime})"
    )


class _PrintVersion(argparse.Action):
    """--version: prints `version_text()` as one line (argparse's own action wraps it to the
    terminal) and exits 0; the versions are looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command, its options and their help."""
    parser = argparse.ArgumentParser(
        prog="yunpian-sms",
        description="Send SMS verification codes through YunPian over gRPC.",
        epilog=f"send, verify, status and validate-template send ${TOKEN_ENV}, when set, as a "
        "bearer token.",
    )
    parser.add_argument(
        "--version",
        action=_PrintVersion,
        help="print the versions installed (this command, the SDK, the contract; Python, grpcio, "
        "protobuf) and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (TOML); default: $YUNPIAN_SMS_CONFIG, else built-in defaults"
    target_help = f"server address; default: ${TARGET_ENV}, else {DEFAULT_TARGET}"
    usage_names = list(USAGE_TYPE_VALUES)
    usage_help = "what the code is for; selects the template (default: Generic)"
    phone_help = 'phone number, e.g. 13800138000 or "+14155552671"'

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", type=Path, help=config_help)
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="send through the built-in sandbox (verifications on; delivery reports pulled "
        "from it unless the config has a [delivery] table)",
    )
    serve.add_argument(
        "--sandbox-listen",
        default=IN_PROCESS_SANDBOX_LISTEN,
        help="HOST:PORT of the --sandbox's HTTP API (default: a free loopback port)",
    )
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="default: json unless a terminal")
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=DEFAULT_LOG_LEVEL,
        help=f"the least severe events logged (default: {DEFAULT_LOG_LEVEL}); libraries' "
        "records from warning up, or all with debug",
    )

    send = commands.add_parser("send", help="send one verification code")
    send.add_argument("phone", help=phone_help)
    send.add_argument("code", help="the code, 4-10 letters or digits")
    send.add_argument("--usage-type", default="Generic", choices=usage_names, help=usage_help)
    send.add_argument("--request-id", help="idempotency key: a repeat with it sends no second SMS")
    _add_client_options(send, target_help)

    _add_verify_commands(commands, target_help)

    status = commands.add_parser(
        "status",
        help="say whether an SMS reached the phone (its delivery report)",
        description="Print one line about an SMS sent through the server: its delivery state "
        "(PENDING, DELIVERED, FAILED or UNKNOWN), the carrier's code, when it was sent and "
        "received, and the carrier's explanation of a failure. Exit status: 0 the SMS was "
        "found (whatever its state), 1 an error, 2 a bad command line.",
    )
    status.add_argument(
        "message_id",
        metavar="MESSAGE_ID",
        help="the message_id `send` printed (or a verification's), e.g. 9007199254741992",
    )
    _add_client_options(status, target_help)

    validate = commands.add_parser("validate-template", help="check a template")
    which = validate.add_mutually_exclusive_group(required=True)
    which.add_argument("--usage-type", choices=usage_names, help="a configured template")
    which.add_argument("--content", help="template content with {{code}}")
    validate.add_argument(
        "--international", action="store_true", help="the international template, and list"
    )
    validate.add_argument("--skip-remote", action="store_true", help="local checks only")
    _add_client_options(validate, target_help)

    check_config = commands.add_parser("check-config", help="validate a config file and exit")
    check_config.add_argument("--config", type=Path, help=config_help)
    check_config.add_argument(
        "--remote", action="store_true", help="also check templates at YunPian"
    )

    commands.add_parser(
        "hash-token",
        help="print the SHA-256 of a caller's token (read from stdin) for [auth.callers]",
    )

    sandbox = commands.add_parser("sandbox", help="run the YunPian sandbox alone")
    sandbox.add_argument(
        "--listen",
        default=DEFAULT_SANDBOX_LISTEN,
        help="HOST:PORT to listen on (default: %(default)s)",
    )
    sandbox.add_argument(
        "--config",
        type=Path,
        help="config file whose API key and templates the sandbox accepts; default: "
        "$YUNPIAN_SMS_CONFIG, else built-in defaults",
    )
    return parser


def _add_verify_commands(commands: Any, target_help: str) -> None:
    """`verify start`, `verify check` and `verify cancel`: a verification through a server."""
    verify = commands.add_parser(
        "verify",
        help="verify a phone number: the server makes the code, sends it and checks it",
        description="Start a verification (the server sends a code it made), check the code "
        "the user typed, or cancel it. Exit status: 0 done (a check: approved), 1 a wrong code "
        "or an error, 2 a bad command line.",
    )
    steps = verify.add_subparsers(dest="step", required=True, metavar="{start,check,cancel}")
    usage_names = list(USAGE_TYPE_VALUES)

    start = steps.add_parser(
        "start",
        help="send a code; while one is pending for the number and usage type, a new code",
    )
    start.add_argument("phone", metavar="PHONE", help='e.g. 13800138000 or "+14155552671"')
    start.add_argument(
        "--usage-type",
        default="Generic",
        choices=usage_names,
        help="what the verification is for; selects the template (default: Generic)",
    )
    start.add_argument("--request-id", help="idempotency key: a repeat with it sends no second SMS")
    _add_client_options(start, target_help)

    check = steps.add_parser(
        "check",
        help="check the code the user typed (PHONE CODE, or --id VERIFICATION_ID CODE)",
    )
    check.add_argument(
        "phone",
        metavar="PHONE",
        nargs="?",
        help="the number of the pending verification to check (or give --id)",
    )
    check.add_argument("code", metavar="CODE", help="the code the user typed")
    check.add_argument(
        "--id",
        dest="verification_id",
        metavar="VERIFICATION_ID",
        help="the id `verify start` printed, instead of PHONE",
    )
    check.add_argument(
        "--usage-type",
        choices=usage_names,
        help="with PHONE: the usage type the verification was started with (default: Generic)",
    )
    _add_client_options(check, target_help)

    cancel = steps.add_parser("cancel", help="cancel a pending verification")
    cancel.add_argument(
        "verification_id", metavar="VERIFICATION_ID", help="the id `verify start` printed"
    )
    _add_client_options(cancel, target_help)


def _load(path: Path | None, *, needs_api_key: bool) -> Config | None:
    """Loads the config, printing one line per problem to stderr; None when it is invalid."""
    try:
        config = load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return None
    store_problem = url_problem(config.store.url)
    if store_problem is not None:
        print(f"config error: {config.store.url_source}: {store_problem}", file=sys.stderr)
        return None
    if needs_api_key and not config.yunpian.api_key:
        print(
            f"config error: yunpian.api_key: is required (or set {API_KEY_ENV}); "
            "use serve --sandbox to run without YunPian",
            file=sys.stderr,
        )
        return None
    return config


async def _run_until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _tune_gc_for_serving() -> None:
    """Fewer, larger collections once started (bench/README.md: at 256 calls in flight the
    default thresholds spent ~55 µs per call in the cyclic GC, ~7 % of the server's CPU).

    What start-up made (modules, config) is moved out of the collector's sight for good.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(config: Config, args: argparse.Namespace) -> None:
    server = SmsServer(config)
    await server.start(listen=args.listen, sandbox=args.sandbox, sandbox_listen=args.sandbox_listen)
    _tune_gc_for_serving()
    try:
        await _run_until_signalled()
    finally:
        await server.stop()


def _run_listener(main: Coroutine[Any, Any, None]) -> int:
    """Runs serve or sandbox; an address it cannot listen on is one line and exit status 2."""
    try:
        asyncio.run(main)
    except ListenError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


async def _sandbox(config: Config, listen: str) -> None:
    running = await serve_sandbox(config, listen)
    structlog.get_logger("yunpian_sms.sandbox").info("sandbox_serving", url=running.url)
    try:
        await _run_until_signalled()
    finally:
        await running.close()


def _target(value: str | None) -> str:
    return value or os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def _client(args: argparse.Namespace) -> SmsClient:
    """An SDK client for the command's --target, TLS files and $YUNPIAN_SMS_TOKEN."""
    credentials = None
    if args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
    token = os.environ.get(TOKEN_ENV)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return SmsClient(_target(args.target), credentials=credentials, metadata=metadata)


def _duration(seconds: float) -> str:
    """A wait as a person reads it, rounded up to whole seconds: "59 s", "1 h 2 min 5 s"."""
    minutes, secs = divmod(max(math.ceil(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{secs} s" if secs or not (hours or minutes) else "")
    return " ".join(part for part in parts if part)


def _report_error(error: SmsError) -> int:
    """One line on stderr: the status, the reason, the message and, when the server said how
    long to wait (RetryInfo: RATE_LIMITED and the like), that wait."""
    line = f"error: {error}"
    if error.retry_delay is not None:
        line += f" (retry after {_duration(error.retry_delay)})"
    print(line, file=sys.stderr)
    return EXIT_FAILED


def _send(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            sent = client.send_code(
                args.phone, args.code, usage_type=args.usage_type, request_id=args.request_id
            )
        except SmsError as error:
            return _report_error(error)
    print(
        f"sent: message_id={sent.message_id} mobile={sent.mobile} segments={sent.segment_count} "
        f"fee={sent.fee} {sent.fee_unit}" + (" (replayed)" if sent.replayed else "")
    )
    return EXIT_OK


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """An enum value's proto name without its prefix; the number for one this SDK lacks."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def _utc(timestamp: Timestamp) -> str:
    """A timestamp as the command line prints it: 2026-12-01T08:00:00Z."""
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verification_line(label: str, verification: Verification) -> str:
    """One line about a verification: what happened, then where it stands (and whether its
    latest SMS arrived, when the server collects delivery reports)."""
    status = _enum_name(VerificationStatus, verification.status, "VERIFICATION_STATUS_")
    usage_type = usage_type_name(verification.usage_type) or str(verification.usage_type)
    delivery = ""
    if verification.delivery != DeliveryState.DELIVERY_STATE_UNSPECIFIED:
        delivery = " delivery=" + _enum_name(
            DeliveryState, verification.delivery, "DELIVERY_STATE_"
        )
    return (
        f"{label}: id={verification.verification_id} status={status} "
        f"phone={verification.phone_number} usage_type={usage_type} "
        f"send_count={verification.send_count} "
        f"checks_remaining={verification.checks_remaining} "
        f"expires={_utc(verification.expire_time)}{delivery}"
        + (" (replayed)" if verification.replayed else "")
    )


def _delivery_line(status: DeliveryStatus) -> str:
    """One line about an SMS: its state, the carrier's code, when it was sent and received
    ("-" while unknown), and last, as free text, the carrier's explanation of a failure."""
    state = _enum_name(DeliveryState, status.state, "DELIVERY_STATE_")
    received = _utc(status.receive_time) if status.HasField("receive_time") else "-"
    line = (
        f"{state}: message_id={status.message_id} carrier_code={status.carrier_code or '-'} "
        f"sent={_utc(status.send_time)} received={received}"
    )
    if status.carrier_detail:
        line += f" carrier_detail={status.carrier_detail}"
    return line


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            status = client.get_delivery_status(args.message_id)
        except SmsError as error:
            return _report_error(error)
    print(_delivery_line(status))
    return EXIT_OK


def _check_target_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `verify check`'s choice of verification, if anything."""
    if args.verification_id is None and args.phone is None:
        return "verify check: give PHONE CODE, or --id VERIFICATION_ID CODE"
    if args.verification_id is not None and args.phone is not None:
        return "verify check: give PHONE or --id VERIFICATION_ID, not both"
    if args.verification_id is not None and args.usage_type is not None:
        return "verify check: --usage-type goes with PHONE; an id names the verification"
    return None


def _verify_start(client: SmsClient, args: argparse.Namespace) -> int:
    started = client.start_verification(
        args.phone, usage_type=args.usage_type, request_id=args.request_id
    )
    print(_verification_line("started" if started.send_count <= 1 else "resent", started))
    return EXIT_OK


def _verify_check(client: SmsClient, args: argparse.Namespace) -> int:
    checked = client.check_verification(
        args.code,
        verification_id=args.verification_id,
        phone_number=args.phone,
        usage_type=args.usage_type,
    )
    label = "approved" if checked.approved else "wrong code"
    print(_verification_line(label, checked.verification))
    return EXIT_OK if checked.approved else EXIT_FAILED


def _verify_cancel(client: SmsClient, args: argparse.Namespace) -> int:
    verification = client.cancel_verification(args.verification_id)
    # An ended verification is answered as it stands: nothing was pending to cancel.
    canceled = verification.status == VerificationStatus.VERIFICATION_STATUS_CANCELED
    print(_verification_line("canceled" if canceled else "already ended", verification))
    return EXIT_OK


_VERIFY_STEPS: Final[dict[str, Callable[[SmsClient, argparse.Namespace], int]]] = {
    "start": _verify_start,
    "check": _verify_check,
    "cancel": _verify_cancel,
}


def _verify(args: argparse.Namespace) -> int:
    problem = _check_target_problem(args) if args.step == "check" else None
    if problem is not None:
        print(f"argument error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        try:
            return _VERIFY_STEPS[args.step](client, args)
        except SmsError as error:
            return _report_error(error)


def _validate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            report = client.validate_template(
                usage_type=args.usage_type,
                content=args.content,
                international=args.international,
                skip_remote=args.skip_remote,
            )
        except SmsError as error:
            return _report_error(error)
    status = TemplateStatus.Name(report.status).removeprefix("TEMPLATE_STATUS_")
    print(f"valid: {'yes' if report.valid else 'no'}")
    print(f"status: {status}")
    if report.template_id:
        print(f"template_id: {report.template_id}")
    if report.status_reason:
        print(f"YunPian's reason: {report.status_reason}")
    print(f"content: {report.content}")
    print(f"register at YunPian as: {report.yunpian_content}")
    print(f"estimated segments: {report.estimated_segments}")
    for problem in report.problems:
        print(f"problem {problem.reason}: {problem.message}")
    return EXIT_OK if report.valid else EXIT_FAILED


def _remote_line(label: str, width: int, result: TemplateCheck) -> str:
    line = f"{label:<{width}}  {result.status.value:<11}"
    if result.template_id:
        line += f"  tpl_id={result.template_id}"
    for problem in result.problems:
        line += f"  {problem.reason.value}: {problem.message}"
    return line.rstrip()


async def _check_remote(config: Config) -> int:
    """Checks every configured template at YunPian with one template-list call."""
    templates = configured_templates(
        config.templates, international_enabled=config.international.enabled
    )
    async with open_yunpian_session(config.yunpian) as session:
        checker = TemplateChecker(
            yunpian_client(session, config.yunpian),
            cache_ttl_s=config.template_checks.remote_cache_seconds,
        )
        try:
            results = await checker.check_many([(t.content, t.international) for t in templates])
        except ServiceError as error:
            print(f"error: {error.message}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await checker.close()
    width = max((len(template.label) for template in templates), default=0)
    for template, result in zip(templates, results, strict=True):
        print(_remote_line(template.label, width, result))
    approved = all(result.status is ApprovalStatus.APPROVED for result in results)
    return EXIT_OK if approved else EXIT_FAILED


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config, needs_api_key=True)
    if config is None:
        return EXIT_USAGE
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"config OK: {args.config or os.environ.get(CONFIG_ENV) or '(defaults)'}")
    if args.remote:
        return asyncio.run(_check_remote(config))
    for name, content in config.templates.domestic.items():
        print(f"template {name}: {content}")
    for name, content in config.templates.international.items():
        print(f"template international {name}: {content}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "send":
        return _send(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "status":
        return _status(args)
    if args.command == "validate-template":
        return _validate(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "hash-token":
        token = sys.stdin.readline().strip()
        if not token:
            print("error: give the token on standard input", file=sys.stderr)
            return EXIT_USAGE
        print(hash_token(token))
        return EXIT_OK
    serving_yunpian = args.command == "serve" and not args.sandbox
    config = _load(args.config, needs_api_key=serving_yunpian)
    if config is None:
        return EXIT_USAGE
    if args.command == "serve":
        try:
            parse_listen(args.sandbox_listen)
        except ValueError as error:
            print(f"argument error: --sandbox-listen: {error}", file=sys.stderr)
            return EXIT_USAGE
        if args.listen is not None:
            try:
                parse_listen(args.listen)
            except ValueError as error:
                print(f"argument error: --listen: {error}", file=sys.stderr)
                return EXIT_USAGE
            exposed = exposure_problem(args.listen, config)
            if exposed is not None:
                print(f"config error: {exposed}", file=sys.stderr)
                return EXIT_USAGE
        configure_logging(args.log_format, level=args.log_level)
        return _run_listener(_serve(config, args))
    try:
        parse_listen(args.listen)
    except ValueError as error:
        print(f"argument error: --listen: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging()
    return _run_listener(_sandbox(config, args.listen))


if __name__ == "__main__":
    sys.exit(main())

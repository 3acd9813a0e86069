"""Callers authenticated by bearer token or client certificate, and limited to usage types."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Pki
from support import StartServer, log_events, make_config

from yunpian_sms_client import (
    AsyncSmsClient,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.config import ConfigError, parse_config
from yunpian_sms_server.sandbox import RunningSandbox

CHECKOUT_TOKEN = "checkout-secret-token-1"
OPS_TOKEN = "ops-secret-token-2"
PHONE = "13800138000"
AUTH = {
    "callers": {
        "checkout": {"token_sha256": hash_token(CHECKOUT_TOKEN), "usage_types": ["SignIn"]},
        "ops": {"token_sha256": hash_token(OPS_TOKEN)},
    }
}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def token_server(start_server: StartServer, **sections: Any) -> str:
    server = await start_server(make_config(auth=AUTH, **sections))
    return f"127.0.0.1:{server.port}"


async def test_a_valid_token_names_the_caller_in_the_log(
    start_server: StartServer, log_output: io.StringIO
) -> None:
    target = await token_server(start_server)
    async with AsyncSmsClient(target, metadata=bearer(CHECKOUT_TOKEN)) as client:
        await client.send_code(PHONE, "123456", usage_type="SignIn")
    [event] = log_events(log_output, "rpc")
    assert event["caller"] == "checkout"
    assert CHECKOUT_TOKEN not in log_output.getvalue()


@pytest.mark.parametrize(
    "metadata",
    [[], bearer("wrong-token"), [("authorization", CHECKOUT_TOKEN)], bearer("")],
    ids=["none", "wrong", "not-bearer", "empty"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    start_server: StartServer, sandbox: RunningSandbox, metadata: list[tuple[str, str]]
) -> None:
    target = await token_server(start_server)
    async with AsyncSmsClient(target, metadata=metadata) as client:
        with pytest.raises(UnauthenticatedError) as caught:
            await client.send_code(PHONE, "123456")
    assert caught.value.reason == "UNAUTHENTICATED"
    assert sandbox.sandbox.messages == []


async def test_a_caller_limited_to_usage_types_is_denied_the_others(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    target = await token_server(start_server)
    async with AsyncSmsClient(target, metadata=bearer(CHECKOUT_TOKEN)) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.send_code(PHONE, "123456", usage_type="Register")
    assert caught.value.reason == "PERMISSION_DENIED"
    assert sandbox.sandbox.messages == []
    async with AsyncSmsClient(target, metadata=bearer(OPS_TOKEN)) as client:
        await client.send_code(PHONE, "123456", usage_type="Register")


async def test_health_checks_need_no_token(start_server: StartServer) -> None:
    target = await token_server(start_server)
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_rate_limits_and_request_ids_are_scoped_per_caller(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.enforce_limits = False
    target = await token_server(start_server, limits={"per_phone": [], "per_caller": ["1/1h"]})
    async with (
        AsyncSmsClient(target, metadata=bearer(CHECKOUT_TOKEN), retry=None) as checkout,
        AsyncSmsClient(target, metadata=bearer(OPS_TOKEN), retry=None) as ops,
    ):
        first = await checkout.send_code(PHONE, "123456", usage_type="SignIn", request_id="r1")
        second = await ops.send_code(PHONE, "123456", usage_type="SignIn", request_id="r1")
        with pytest.raises(ResourceExhaustedError) as caught:
            await checkout.send_code("13900139000", "123456", usage_type="SignIn")
    assert not second.replayed  # the same request_id from another caller is another request
    assert first.message_id != second.message_id
    assert caught.value.metadata["scope"] == "caller"
    assert len(sandbox.sandbox.messages) == 2


def mtls_sections(pki: Pki) -> dict[str, Any]:
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    return {
        "server": {"tls": tls},
        "auth": {"callers": {"billing": {"usage_types": ["ForgotPassword"]}}},
    }


def client_credentials(pki: Pki, common_name: str | None) -> grpc.ChannelCredentials:
    if common_name is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    cert, key = pki.client(common_name)
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


async def test_mutual_tls_names_the_caller_by_certificate_subject(
    start_server: StartServer, pki: Pki, log_output: io.StringIO
) -> None:
    server = await start_server(make_config(**mtls_sections(pki)))
    credentials = client_credentials(pki, "billing")
    async with AsyncSmsClient(f"localhost:{server.port}", credentials=credentials) as client:
        sent = await client.send_code(PHONE, "123456", usage_type="ForgotPassword")
        with pytest.raises(PermissionDeniedError):
            await client.send_code(PHONE, "123456", usage_type="SignIn")
    assert sent.message_id
    assert [event["caller"] for event in log_events(log_output, "rpc")] == ["billing", "billing"]


async def test_mutual_tls_refuses_a_certificate_of_an_unknown_caller(
    start_server: StartServer, pki: Pki
) -> None:
    server = await start_server(make_config(**mtls_sections(pki)))
    credentials = client_credentials(pki, "stranger")
    async with AsyncSmsClient(f"localhost:{server.port}", credentials=credentials) as client:
        with pytest.raises(UnauthenticatedError):
            await client.send_code(PHONE, "123456", usage_type="ForgotPassword")


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    start_server: StartServer, pki: Pki
) -> None:
    server = await start_server(make_config(**mtls_sections(pki)))
    credentials = client_credentials(pki, None)
    async with AsyncSmsClient(
        f"localhost:{server.port}", credentials=credentials, retry=None
    ) as client:
        with pytest.raises(UnavailableError):
            await client.send_code(PHONE, "123456", timeout=3.0)


async def test_tls_with_tokens_serves_encrypted_and_authenticated(
    start_server: StartServer, pki: Pki
) -> None:
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
    server = await start_server(make_config(server={"tls": tls}, auth=AUTH))
    credentials = client_credentials(pki, None)
    target = f"localhost:{server.port}"
    async with AsyncSmsClient(
        target, credentials=credentials, metadata=bearer(OPS_TOKEN)
    ) as client:
        assert (await client.send_code(PHONE, "123456")).message_id


def config_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    return [str(problem) for problem in caught.value.problems]


def test_serving_beyond_loopback_without_auth_must_be_allowed_explicitly() -> None:
    [problem] = config_problems({"server": {"listen": "0.0.0.0:50051"}})
    assert problem.startswith("server.listen:")
    assert "allow_unauthenticated" in problem
    allowed = {"listen": "0.0.0.0:50051", "allow_unauthenticated": True}
    assert parse_config({"server": allowed}, {}).server.allow_unauthenticated
    assert parse_config({"server": {"listen": "0.0.0.0:50051"}, "auth": AUTH}, {}).auth


def test_auth_config_problems_are_reported_by_key(tmp_path: Path) -> None:
    problems = config_problems(
        {
            "auth": {
                "callers": {
                    "a": {"token_sha256": "short"},
                    "b": {"token_sha256": hash_token("x"), "usage_types": ["Nope"]},
                    "c": {"token_sha256": hash_token("x")},
                    "d": {},
                    "bad name!": {"token_sha256": hash_token("y")},
                }
            },
            "server": {"tls": {"cert": str(tmp_path / "missing.crt")}},
        }
    )
    assert problems == [
        f"server.tls.cert: {tmp_path / 'missing.crt'} is not a readable file",
        "server.tls.key: is required with [server.tls]",
        "auth.callers.a.token_sha256: must be 64 hexadecimal characters (SHA-256 of the token)",
        "auth.callers.b.usage_types: 'Nope' is not a usage type",
        "auth.callers.c.token_sha256: is the same as another caller's",
        "auth.callers.d.token_sha256: is missing and server.tls.client_ca is not set: "
        "the caller could never authenticate",
        "auth.callers.bad name!: must be 1-64 letters, digits, '.', '_' or '-'",
    ]

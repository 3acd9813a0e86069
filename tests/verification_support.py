"""Helpers of the verification tests: configs, raw gRPC calls and the codes the sandbox delivered.

The tests call the generated stub directly (every RPC is one call, no SDK retries), so what they
see is exactly what the server answered.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support import FINGERPRINT_SECRET, error_info

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.sandbox import RunningSandbox

# Verification secrets (at least 32 characters, as the config demands).
SECRET: Final = "test-verify-secret-0123456789abcdef-1"
OTHER_SECRET: Final = "test-verify-secret-0123456789abcdef-2"
CALL_TIMEOUT_S: Final = 5.0

# Two callers of one server (`[auth]`): a verification belongs to the caller that started it.
OWNER_TOKEN: Final = "verification-owner-token-1"
STRANGER_TOKEN: Final = "verification-stranger-token-2"
TWO_CALLERS: Final = {
    "callers": {
        "owner": {"token_sha256": hash_token(OWNER_TOKEN)},
        "stranger": {"token_sha256": hash_token(STRANGER_TOKEN)},
    }
}

_numbers = itertools.count()


def phone_numbers(prefix: str = "137") -> Iterator[str]:
    """Mainland numbers no other caller of this function in the session has had."""
    while True:
        yield f"{prefix}{next(_numbers):08d}"


def verify_section(**overrides: Any) -> dict[str, Any]:
    """A `[verify]` table with verifications on, SECRET, and the given keys changed."""
    return {"enabled": True, "secret": SECRET, **overrides}


def redis_store(url: str) -> dict[str, Any]:
    """A `[store]` table on a shared Redis."""
    return {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Verifier:
    """The verification RPCs of one channel, as one caller (its metadata)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.stub = pb_grpc.SmsServiceStub(channel)
        self.metadata = tuple(metadata)

    async def start(
        self, phone: str, usage_type: int = pb.USAGE_TYPE_UNSPECIFIED, request_id: str = ""
    ) -> pb.Verification:
        request = pb.StartVerificationRequest(
            phone_number=phone, usage_type=usage_type, request_id=request_id
        )
        answer: pb.Verification = await self.stub.StartVerification(
            request, timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )
        return answer

    async def check(self, verification_id: str, code: str) -> pb.CheckVerificationResponse:
        request = pb.CheckVerificationRequest(verification_id=verification_id, code=code)
        return await self.check_request(request)

    async def check_phone(
        self, phone: str, code: str, usage_type: int = pb.USAGE_TYPE_UNSPECIFIED
    ) -> pb.CheckVerificationResponse:
        request = pb.CheckVerificationRequest(phone_number=phone, usage_type=usage_type, code=code)
        return await self.check_request(request)

    async def check_request(
        self, request: pb.CheckVerificationRequest
    ) -> pb.CheckVerificationResponse:
        answer: pb.CheckVerificationResponse = await self.stub.CheckVerification(
            request, timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )
        return answer

    async def cancel(self, verification_id: str) -> pb.Verification:
        request = pb.CancelVerificationRequest(verification_id=verification_id)
        answer: pb.Verification = await self.stub.CancelVerification(
            request, timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )
        return answer


@asynccontextmanager
async def verifier(port: int, metadata: Sequence[tuple[str, str]] = ()) -> AsyncIterator[Verifier]:
    """A Verifier of the server on 127.0.0.1:`port`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Verifier(channel, metadata)


def code_of(sandbox: RunningSandbox, verification: pb.Verification) -> str:
    """The code of the verification's latest SMS, as the sandbox delivered it (by its sid)."""
    [message] = [
        message
        for message in sandbox.sandbox.messages
        if str(message.sid) == verification.message_id
    ]
    assert message.mobile == verification.phone_number
    assert message.code is not None
    return message.code


def wrong_code(*right: str, length: int = 6) -> str:
    """A code of `length` digits that is none of `right`."""
    for candidate in itertools.count():
        code = f"{(candidate * 7919 + 1) % 10**length:0{length}d}"
        if code not in right:
            return code
    raise AssertionError("unreachable")


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    """A refusal as (gRPC code, ErrorInfo reason)."""
    info = error_info(error)
    assert info.domain == "yunpian.sms.v1"
    return error.code(), info.reason


def _details(error: grpc.aio.AioRpcError) -> list[Any]:
    status = rpc_status.from_call(error)
    assert status is not None
    return list(status.details)


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a refusal's BadRequest names."""
    fields = []
    for detail in _details(error):
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [violation.field for violation in bad.field_violations]
    return fields


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a refusal, in seconds; None without one."""
    for detail in _details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None

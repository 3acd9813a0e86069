"""Arbitrary input at every request field (hypothesis): the service answers OK or refuses with a
precise reason, never INTERNAL or UNKNOWN, and sends nothing for a refused request (issue 4).

Requests go through a raw grpc.aio stub, so nothing in the SDK filters them first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Final, TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support import StartServer, error_info, make_config

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.sandbox import RunningSandbox

DOMAIN: Final = "yunpian.sms.v1"
TIMEOUT_S: Final = 5.0
# The examples share one server and one sandbox: function-scoped fixtures are meant.
PROPERTY_SETTINGS: Final = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT32: Final = st.integers(-(2**31), 2**31 - 1)
# Any text: every Unicode category but surrogates (control characters included), short or long.
ANY_TEXT: Final = st.one_of(
    st.text(max_size=40),
    st.text(min_size=200, max_size=4096),
)
# Per field: plausible values (most of them valid), and anything at all.
VALID_PHONE_NUMBERS: Final = st.one_of(
    st.from_regex(r"(\+?86 ?)?1[3-9][0-9]{9}", fullmatch=True),
    st.sampled_from(
        [
            "+86 138-0013-8000",
            "(+86) 138 0013 8000",
            " 13800138000\t",
            "+14155552671",  # US: allowed
            "+1 (415) 555-2671",
            "+447911123456",  # GB: allowed
            "+6581234567",  # SG: REGION_NOT_ALLOWED
            "+81 90-1234-5678",  # JP: REGION_NOT_ALLOWED
            "010-12345678",  # a landline: INVALID_PHONE_NUMBER
        ]
    ),
)
ANY_PHONE_NUMBERS: Final = st.one_of(
    st.from_regex(r"\+?[0-9 ()\-.]{1,40}", fullmatch=True), ANY_TEXT
)
VALID_CODES: Final = st.from_regex(r"[0-9A-Za-z]{4,10}", fullmatch=True)
ANY_CODES: Final = st.one_of(st.from_regex(r"[0-9A-Za-z]{0,12}", fullmatch=True), ANY_TEXT)
KNOWN_USAGE_TYPES: Final = st.sampled_from(list(pb.UsageType.values()))
ANY_USAGE_TYPES: Final = st.one_of(st.integers(-1, 10), INT32)
VALID_REQUEST_IDS: Final = st.one_of(
    st.just(""), st.from_regex(r"[\x20-\x7e]{1,128}", fullmatch=True)
)
ANY_REQUEST_IDS: Final = st.one_of(st.from_regex(r"[\x20-\x7e]{120,140}", fullmatch=True), ANY_TEXT)
VALID_FIELDS: Final = {
    "phone_number": VALID_PHONE_NUMBERS,
    "code": VALID_CODES,
    "usage_type": KNOWN_USAGE_TYPES,
    "request_id": VALID_REQUEST_IDS,
}
ANY_FIELDS: Final = {
    "phone_number": ANY_PHONE_NUMBERS,
    "code": ANY_CODES,
    "usage_type": ANY_USAGE_TYPES,
    "request_id": ANY_REQUEST_IDS,
}
# Half plausible requests, a quarter with one field arbitrary, a quarter arbitrary throughout.
SEND_CODE_REQUESTS: Final = st.one_of(
    st.builds(pb.SendCodeRequest, **VALID_FIELDS),
    st.builds(pb.SendCodeRequest, **VALID_FIELDS),
    st.sampled_from(list(ANY_FIELDS)).flatmap(
        lambda field: st.builds(pb.SendCodeRequest, **{**VALID_FIELDS, field: ANY_FIELDS[field]})
    ),
    st.builds(pb.SendCodeRequest, **ANY_FIELDS),
)
ResponseT = TypeVar("ResponseT")
REFUSALS: Final = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture
async def stub(
    start_server: StartServer, sandbox: RunningSandbox
) -> AsyncIterator[pb_grpc.SmsServiceStub]:
    sandbox.sandbox.enforce_limits = False  # YunPian's per-number limits are not under test
    server = await start_server(
        make_config(
            international={"enabled": True, "allowed_regions": ["US", "GB"]},
            limits={"per_phone": [], "per_caller": [], "global": []},
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SmsServiceStub(channel)


async def answer(
    call: Awaitable[ResponseT],
) -> tuple[ResponseT, None] | tuple[None, grpc.aio.AioRpcError]:
    """The response of a call, or the error it failed with."""
    try:
        return await call, None
    except grpc.aio.AioRpcError as error:
        return None, error


def assert_refused_with_a_reason(error: grpc.aio.AioRpcError) -> str:
    assert error.code() in REFUSALS, error
    info = error_info(error)
    assert info.domain == DOMAIN
    assert info.reason
    event(f"{error.code().name} {info.reason}")
    return info.reason


@PROPERTY_SETTINGS
@given(request=SEND_CODE_REQUESTS)
@example(request=pb.SendCodeRequest(phone_number="+", code="0000"))
@example(request=pb.SendCodeRequest(phone_number="1" * 5000, code="1" * 5000))
@example(request=pb.SendCodeRequest(phone_number="13800138000\x00", code="1234\x00"))
@example(request=pb.SendCodeRequest(phone_number="+800 1234 5678", code="123456"))
@example(request=pb.SendCodeRequest(phone_number="13800138000", code="1234", usage_type=-1))
@example(request=pb.SendCodeRequest(phone_number="13800138000", code="1234", usage_type=2**31 - 1))
@example(request=pb.SendCodeRequest(phone_number="13800138000", code="1234", request_id="x" * 129))
@example(request=pb.SendCodeRequest(phone_number="13800138000", code="1234", request_id="é"))
async def test_send_code_answers_any_request_with_ok_or_a_precise_refusal(
    stub: pb_grpc.SmsServiceStub, sandbox: RunningSandbox, request: pb.SendCodeRequest
) -> None:
    before = len(sandbox.sandbox.messages)
    sent, refused = await answer(stub.SendCode(request, timeout=TIMEOUT_S))
    if refused is not None:
        assert_refused_with_a_reason(refused)
        assert len(sandbox.sandbox.messages) == before  # nothing sent for a refusal
        return
    assert sent is not None
    event("OK (replayed)" if sent.replayed else "OK")
    # A replay (the same request_id and request drawn twice) answers without sending.
    assert len(sandbox.sandbox.messages) == before + (0 if sent.replayed else 1)
    assert sent.message_id.isdigit()
    if not sent.replayed:
        assert sandbox.sandbox.messages[-1].mobile == sent.mobile
        assert sandbox.sandbox.messages[-1].code == request.code


@PROPERTY_SETTINGS
@given(
    content=st.one_of(
        ANY_TEXT,
        st.builds(
            "".join,
            st.lists(
                st.sampled_from(
                    ["{{code}}", "{{ code }}", "{{x}}", "【签名】", "验证码", "a", " ", "\n", "#"]
                ),
                max_size=12,
            ),
        ),
    ),
    international=st.booleans(),
    skip_remote=st.sampled_from([True, True, True, False]),
)
async def test_validate_template_answers_any_content_with_ok_or_invalid_argument(
    stub: pb_grpc.SmsServiceStub, content: str, international: bool, skip_remote: bool
) -> None:
    request = pb.ValidateTemplateRequest(
        content=content, international=international, skip_remote=skip_remote
    )
    report, refused = await answer(stub.ValidateTemplate(request, timeout=TIMEOUT_S))
    if refused is not None:
        assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT, refused
        assert assert_refused_with_a_reason(refused) == "INVALID_TEMPLATE"
        return
    assert report is not None
    approved = skip_remote or report.status == pb.TEMPLATE_STATUS_APPROVED
    assert report.valid == (not report.problems and approved)
    if skip_remote:
        assert report.status == pb.TEMPLATE_STATUS_NOT_CHECKED


@PROPERTY_SETTINGS
@given(
    usage_type=st.one_of(KNOWN_USAGE_TYPES, ANY_USAGE_TYPES),
    international=st.booleans(),
    skip_remote=st.booleans(),
)
async def test_validate_template_answers_any_usage_type_with_ok_or_invalid_argument(
    stub: pb_grpc.SmsServiceStub, usage_type: int, international: bool, skip_remote: bool
) -> None:
    request = pb.ValidateTemplateRequest(
        usage_type=usage_type, international=international, skip_remote=skip_remote
    )
    report, refused = await answer(stub.ValidateTemplate(request, timeout=TIMEOUT_S))
    if refused is not None:
        assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT, refused
        assert assert_refused_with_a_reason(refused) == "INVALID_USAGE_TYPE"
        return
    assert report is not None
    # Every known usage type has a template (its own or Generic's), approved in the sandbox.
    assert report.content
    if not skip_remote:
        assert report.valid

"""The SmsService servicer: validates a request, picks its template, and calls YunPian once."""

from __future__ import annotations

import re
from typing import Any, Final

import grpc

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.codes import check_code
from yunpian_sms_server.config import Config
from yunpian_sms_server.errors import (
    PreconditionViolation,
    Reason,
    ServiceError,
    invalid_argument,
)
from yunpian_sms_server.interceptors import bind_rpc_fields
from yunpian_sms_server.phone import PhoneNumber, parse_phone
from yunpian_sms_server.templates import render
from yunpian_sms_server.usage import usage_type_name
from yunpian_sms_server.yunpian import YunpianClient

MAX_REQUEST_ID_LENGTH: Final = 128
_REQUEST_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")

Context = grpc.aio.ServicerContext[Any, Any]


def check_usage_type(value: int) -> str:
    """The usage type's config name; raises INVALID_USAGE_TYPE for a value the proto lacks."""
    name = usage_type_name(value)
    if name is None:
        raise invalid_argument(
            Reason.INVALID_USAGE_TYPE, "usage_type", f"Unknown usage type {value}."
        )
    return name


def check_request_id(request_id: str) -> None:
    """Raises INVALID_REQUEST_ID unless empty or 1-128 printable ASCII characters."""
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise invalid_argument(
            Reason.INVALID_REQUEST_ID,
            "request_id",
            f"The request_id must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters.",
        )


class SmsServicer(pb_grpc.SmsServiceServicer):
    """Answers SmsService RPCs; errors are raised as ServiceError for the interceptor to map."""

    def __init__(self, config: Config, yunpian: YunpianClient) -> None:
        self._config = config
        self._yunpian = yunpian
        self.shutting_down = False

    def _check_international(self, phone: PhoneNumber) -> None:
        policy = self._config.international
        if not phone.international:
            return
        if not policy.enabled:
            raise ServiceError(
                Reason.INTERNATIONAL_DISABLED,
                policy.refusal_message,
                precondition=PreconditionViolation(
                    "INTERNATIONAL", phone.region, "International sending is disabled."
                ),
            )
        if policy.allowed_regions and phone.region not in policy.allowed_regions:
            raise ServiceError(
                Reason.REGION_NOT_ALLOWED,
                policy.refusal_message,
                precondition=PreconditionViolation(
                    "REGION", phone.region, f"Sending to region {phone.region} is not allowed."
                ),
            )

    async def SendCode(self, request: pb.SendCodeRequest, context: Context) -> pb.SendCodeResponse:
        if self.shutting_down:
            raise ServiceError(
                Reason.SHUTTING_DOWN, "The server is shutting down; retry elsewhere."
            )
        phone = parse_phone(request.phone_number)
        bind_rpc_fields(phone=phone.masked, international=phone.international)
        check_code(request.code)
        usage_type = check_usage_type(request.usage_type)
        bind_rpc_fields(usage_type=usage_type)
        check_request_id(request.request_id)
        bind_rpc_fields(request_id=request.request_id or None)
        self._check_international(phone)
        template = self._config.templates.lookup(usage_type, international=phone.international)
        if template is None:
            raise ServiceError(
                Reason.TEMPLATE_NOT_CONFIGURED,
                f"No template is configured for usage type {usage_type} or Generic.",
            )
        result = await self._yunpian.single_send(
            phone.yunpian_mobile,
            render(template, request.code),
            subject=phone.masked,
            time_remaining=context.time_remaining(),
        )
        bind_rpc_fields(message_id=result.sid, yunpian_code=0)
        return pb.SendCodeResponse(
            message_id=result.sid,
            mobile=result.mobile,
            international=phone.international,
            segment_count=result.count,
            fee=result.fee,
            fee_unit=result.unit,
        )

    async def ValidateTemplate(
        self, request: pb.ValidateTemplateRequest, context: Context
    ) -> pb.ValidateTemplateResponse:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "ValidateTemplate is not implemented yet."
        )
        raise AssertionError("unreachable")  # pragma: no cover

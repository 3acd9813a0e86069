"""The SmsService servicer: validates a request and picks its template; the send protocol sends.

Each method takes the request and its `RpcCall` (the caller, the time left, the record it fills);
the RPC envelope calls it and turns what it raises into a status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.account_templates import ApprovalStatus
from yunpian_sms_server.auth import Caller, require_usage_type
from yunpian_sms_server.config import Config
from yunpian_sms_server.errors import (
    PreconditionViolation,
    Reason,
    ServiceError,
    invalid_argument,
)
from yunpian_sms_server.phone import PhoneNumber, parse_phone
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.send_protocol import SendOrder, SendProtocol
from yunpian_sms_server.template_check import TemplateCheck, TemplateChecker
from yunpian_sms_server.templates import render
from yunpian_sms_server.usage_types import usage_type_name
from yunpian_sms_server.verification_codes import check_code

MAX_REQUEST_ID_LENGTH: Final = 128
# ValidateTemplate's content: far above YunPian's 500, low enough to keep the diff against every
# account template cheap.
MAX_TEMPLATE_CONTENT_LENGTH: Final = 2000
_REQUEST_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")


@dataclass(frozen=True, slots=True)
class RpcCall:
    """One RPC as a servicer method sees it: who calls, the time it has left, its record."""

    caller: Caller
    record: RpcRecord
    # Seconds until the caller's deadline, None without one (grpc's time_remaining).
    time_remaining: Callable[[], float | None]


_TEMPLATE_STATUSES: Final[Mapping[ApprovalStatus, pb.TemplateStatus]] = {
    ApprovalStatus.APPROVED: pb.TEMPLATE_STATUS_APPROVED,
    ApprovalStatus.PENDING: pb.TEMPLATE_STATUS_PENDING,
    ApprovalStatus.REJECTED: pb.TEMPLATE_STATUS_REJECTED,
    ApprovalStatus.NOT_FOUND: pb.TEMPLATE_STATUS_NOT_FOUND,
    ApprovalStatus.NOT_CHECKED: pb.TEMPLATE_STATUS_NOT_CHECKED,
}


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


class SmsServicer:
    """Answers SmsService RPCs; failures are raised as ServiceError."""

    def __init__(self, config: Config, sending: SendProtocol, checker: TemplateChecker) -> None:
        self._config = config
        self._sending = sending
        self._checker = checker

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

    async def SendCode(self, request: pb.SendCodeRequest, call: RpcCall) -> pb.SendCodeResponse:
        record = call.record
        phone = parse_phone(request.phone_number)
        record.phone, record.international = phone.masked, phone.international
        check_code(request.code)
        usage_type = record.usage_type = check_usage_type(request.usage_type)
        check_request_id(request.request_id)
        record.idempotency_key = request.request_id or None
        require_usage_type(call.caller, usage_type)
        self._check_international(phone)
        template = self._config.templates.lookup(usage_type, international=phone.international)
        if template is None:
            raise ServiceError(
                Reason.TEMPLATE_NOT_CONFIGURED,
                f"No template is configured for usage type {usage_type} or Generic.",
            )
        order = SendOrder(
            caller=call.caller.name,
            phone=phone,
            usage_type=usage_type,
            code=request.code,
            text=render(template, request.code),
            request_id=request.request_id,
        )
        try:
            sent = await self._sending.send(order, call.time_remaining())
        except ServiceError as error:
            record.replayed = error.replayed
            raise
        record.message_id, record.replayed = sent.message_id, sent.replayed
        if not sent.replayed:
            record.yunpian_code = 0
        return sent

    async def ValidateTemplate(
        self, request: pb.ValidateTemplateRequest, call: RpcCall
    ) -> pb.ValidateTemplateResponse:
        international = call.record.international = request.international
        which = request.WhichOneof("template")
        if which == "usage_type":
            usage_type = call.record.usage_type = check_usage_type(request.usage_type)
            content = self._config.templates.lookup(usage_type, international=international)
            if content is None:
                raise ServiceError(
                    Reason.TEMPLATE_NOT_CONFIGURED,
                    f"No template is configured for usage type {usage_type} or Generic.",
                )
        elif which == "content":
            content = request.content
            if len(content) > MAX_TEMPLATE_CONTENT_LENGTH:
                raise invalid_argument(
                    Reason.INVALID_TEMPLATE,
                    "content",
                    f"The content must be at most {MAX_TEMPLATE_CONTENT_LENGTH} characters.",
                )
        else:
            raise invalid_argument(
                Reason.INVALID_TEMPLATE, "template", "Set either usage_type or content."
            )
        result = await self._checker.check(
            content,
            international=international,
            skip_remote=request.skip_remote,
            time_remaining=call.time_remaining(),
        )
        return template_response(result)


def template_response(result: TemplateCheck) -> pb.ValidateTemplateResponse:
    """The ValidateTemplateResponse of a check."""
    return pb.ValidateTemplateResponse(
        valid=result.valid,
        problems=[
            pb.TemplateProblem(reason=problem.reason.value, message=problem.message)
            for problem in result.problems
        ],
        content=result.content,
        yunpian_content=result.yunpian_content,
        status=_TEMPLATE_STATUSES[result.status],
        template_id=result.template_id,
        status_reason=result.status_reason,
        estimated_segments=result.estimated_segments,
    )

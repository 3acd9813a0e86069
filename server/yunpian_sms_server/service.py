"""The SmsService servicer: validates a request and picks its template; the send protocol sends.

Each method takes the request and its `RpcCall` (the caller, the time left, the record it fills);
the RPC envelope calls it and turns what it raises into a status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from google.protobuf import timestamp_pb2

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_server.account_templates import ApprovalStatus
from yunpian_sms_server.auth import Caller, require_usage_type
from yunpian_sms_server.config import Config
from yunpian_sms_server.delivery_reports import DeliveryReports, check_message_id
from yunpian_sms_server.delivery_state import DeliveryState
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
from yunpian_sms_server.usage_types import USAGE_TYPE_VALUES, usage_type_name
from yunpian_sms_server.verification_codes import check_code, check_typed_code
from yunpian_sms_server.verification_state import VerificationState, VerificationStatus
from yunpian_sms_server.verifications import (
    Verifications,
    check_verification_id,
    ended,
)

MAX_REQUEST_ID_LENGTH: Final = 128
_DELIVERY_STATES: Final[Mapping[DeliveryState, pb.DeliveryState]] = {
    DeliveryState.PENDING: pb.DELIVERY_STATE_PENDING,
    DeliveryState.DELIVERED: pb.DELIVERY_STATE_DELIVERED,
    DeliveryState.FAILED: pb.DELIVERY_STATE_FAILED,
    DeliveryState.UNKNOWN: pb.DELIVERY_STATE_UNKNOWN,
}
_VERIFICATION_STATUSES: Final[Mapping[VerificationStatus, pb.VerificationStatus]] = {
    VerificationStatus.PENDING: pb.VERIFICATION_STATUS_PENDING,
    VerificationStatus.APPROVED: pb.VERIFICATION_STATUS_APPROVED,
    VerificationStatus.CANCELED: pb.VERIFICATION_STATUS_CANCELED,
    VerificationStatus.EXPIRED: pb.VERIFICATION_STATUS_EXPIRED,
    VerificationStatus.MAX_ATTEMPTS_REACHED: pb.VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED,
}
# ValidateTemplate's content: far above YunPian's 500, low enough to keep the diff against every
# account template cheap.
MAX_TEMPLATE_CONTENT_LENGTH: Final = 2000
_REQUEST_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")
_Value = TypeVar("_Value")
_Checked = TypeVar("_Checked")


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


class FieldChecks:
    """A request's independent fields, each checked whatever became of the others: the valid
    ones can be recorded (the `rpc` event names the phone and usage type of a request whose
    code was refused), then the first failure, in the order checked, is raised. Checked in the
    proto's field order, a request is refused for the same field as when checks stopped at the
    first failure."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures: list[ServiceError] = []

    def value(self, check: Callable[[_Value], _Checked], field: _Value) -> _Checked | None:
        """What `check` makes of the field; None (the failure kept) when it refuses it."""
        try:
            return check(field)
        except ServiceError as error:
            self.failures.append(error)
            return None

    def passes(self, check: Callable[[_Value], object], field: _Value) -> bool:
        """Whether `check` accepts the field (the failure kept when it does not)."""
        try:
            check(field)
        except ServiceError as error:
            self.failures.append(error)
            return False
        return True

    @property
    def first(self) -> ServiceError:
        """The first failure (there must be one)."""
        return self.failures[0]


class SmsServicer:
    """Answers SmsService RPCs; failures are raised as ServiceError."""

    def __init__(
        self,
        config: Config,
        sending: SendProtocol,
        checker: TemplateChecker,
        verifications: Verifications | None = None,
        reports: DeliveryReports | None = None,
    ) -> None:
        self._config = config
        self._sending = sending
        self._checker = checker
        # None: verifications are turned off; delivery reports are not collected.
        self._verifications = verifications
        self._reports = reports

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

    def _template(self, usage_type: str, phone: PhoneNumber) -> str:
        """The template a send of this usage type to this number uses."""
        template = self._config.templates.lookup(usage_type, international=phone.international)
        if template is None:
            raise ServiceError(
                Reason.TEMPLATE_NOT_CONFIGURED,
                f"No template is configured for usage type {usage_type} or Generic.",
            )
        return template

    async def SendCode(self, request: pb.SendCodeRequest, call: RpcCall) -> pb.SendCodeResponse:
        record = call.record
        fields = FieldChecks()
        phone = fields.value(parse_phone, request.phone_number)
        fields.passes(check_code, request.code)
        usage_type = fields.value(check_usage_type, request.usage_type)
        request_id_valid = fields.passes(check_request_id, request.request_id)
        _record_fields(record, phone, usage_type, request.request_id if request_id_valid else "")
        if phone is None or usage_type is None or fields.failures:
            raise fields.first
        require_usage_type(call.caller, usage_type)
        self._check_international(phone)
        template = self._template(usage_type, phone)
        order = SendOrder(
            caller=call.caller.name,
            phone=phone,
            usage_type=usage_type,
            code=request.code,
            text=render(template, request.code),
            request_id=request.request_id,
        )
        try:
            sent = (await self._sending.send(order, call.time_remaining())).response
        except ServiceError as error:
            record.replayed = error.replayed
            raise
        _record_sent(record, sent)
        return sent

    def _enabled(self) -> Verifications:
        if self._verifications is None:
            raise ServiceError(
                Reason.VERIFICATION_DISABLED,
                "Verifications are not enabled on this server ([verify] enabled).",
            )
        return self._verifications

    async def StartVerification(
        self, request: pb.StartVerificationRequest, call: RpcCall
    ) -> pb.Verification:
        record = call.record
        fields = FieldChecks()
        phone = fields.value(parse_phone, request.phone_number)
        usage_type = fields.value(check_usage_type, request.usage_type)
        request_id_valid = fields.passes(check_request_id, request.request_id)
        _record_fields(record, phone, usage_type, request.request_id if request_id_valid else "")
        verifications = self._enabled()  # refused first, whatever the fields, as always
        if phone is None or usage_type is None or fields.failures:
            raise fields.first
        require_usage_type(call.caller, usage_type)
        self._check_international(phone)
        try:
            started = await verifications.start(
                caller=call.caller.name,
                phone=phone,
                usage_type=usage_type,
                template=self._template(usage_type, phone),
                request_id=request.request_id,
                time_remaining=call.time_remaining(),
            )
        except ServiceError as error:
            record.replayed = error.replayed
            raise
        state = started.state
        record.verification_id = state.verification_id
        if started.sent is not None:
            _record_sent(record, started.sent)
        if not started.replayed:
            record.verification_change = "started" if state.send_count == 1 else "resent"
        delivery = await self._delivery(call, state)
        return verification_message(state, delivery, replayed=started.replayed)

    async def CheckVerification(
        self, request: pb.CheckVerificationRequest, call: RpcCall
    ) -> pb.CheckVerificationResponse:
        verifications = self._enabled()
        record = call.record
        caller = call.caller.name
        which = request.WhichOneof("target")
        if which == "verification_id":
            check_verification_id(request.verification_id)
            verification_id = request.verification_id
        elif which == "phone_number":
            fields = FieldChecks()
            phone = fields.value(parse_phone, request.phone_number)
            usage_type = fields.value(check_usage_type, request.usage_type)
            _record_fields(record, phone, usage_type, "")
            length = verifications.code_length
            fields.passes(lambda code: check_typed_code(code, length), request.code)
            if phone is None or usage_type is None or fields.failures:
                raise fields.first
            try:
                verification_id = await verifications.find(caller, phone, usage_type)
            except ServiceError:
                record.check_result = "not_found"
                raise
        else:
            raise invalid_argument(
                Reason.INVALID_VERIFICATION_TARGET,
                "target",
                "Set the verification_id, or the phone_number (and usage_type).",
            )
        record.verification_id = verification_id
        try:
            checked = await verifications.check(caller, verification_id, request.code)
        except ServiceError as error:
            if error.reason is Reason.VERIFICATION_NOT_FOUND:
                record.check_result = "not_found"
            elif error.reason is not Reason.INVALID_CODE:
                record.check_result = "ended"
            raise
        state = checked.state
        record.usage_type = state.usage_type
        if checked.expired_now:
            record.verification_change, record.check_result = "expired", "ended"
            raise ended(state)
        if checked.approved:
            record.verification_change = record.check_result = "approved"
        elif state.status is VerificationStatus.MAX_ATTEMPTS_REACHED:
            record.verification_change = record.check_result = "max_attempts"
        else:
            record.check_result = "wrong"
        delivery = await self._delivery(call, state)
        return pb.CheckVerificationResponse(
            approved=checked.approved, verification=verification_message(state, delivery)
        )

    async def CancelVerification(
        self, request: pb.CancelVerificationRequest, call: RpcCall
    ) -> pb.Verification:
        verifications = self._enabled()
        check_verification_id(request.verification_id)
        call.record.verification_id = request.verification_id
        state, canceled = await verifications.cancel(call.caller.name, request.verification_id)
        call.record.usage_type = state.usage_type
        if canceled:
            call.record.verification_change = "canceled"
        return verification_message(state, await self._delivery(call, state))

    async def _delivery(self, call: RpcCall, state: VerificationState) -> DeliveryState | None:
        """Whether the verification's latest SMS arrived (None: reports are not collected)."""
        if self._reports is None:
            return None
        return await self._reports.delivery_of(call.caller.name, state.message_id)

    async def GetDeliveryStatus(
        self, request: pb.GetDeliveryStatusRequest, call: RpcCall
    ) -> pb.DeliveryStatus:
        check_message_id(request.message_id)
        call.record.message_id = request.message_id
        if self._reports is None:
            raise ServiceError(
                Reason.DELIVERY_REPORTS_DISABLED,
                "This server collects no delivery reports ([delivery] mode is off).",
            )
        message = await self._reports.status(call.caller.name, request.message_id)
        status = pb.DeliveryStatus(
            message_id=message.message_id,
            state=_DELIVERY_STATES[message.state],
            carrier_code=message.carrier_code,
            carrier_detail=message.carrier_detail,
            send_time=_timestamp(message.sent_at),
        )
        if message.received_at is not None:
            status.receive_time.CopyFrom(_timestamp(message.received_at))
        return status

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


def _record_fields(
    record: RpcRecord, phone: PhoneNumber | None, usage_type: str | None, request_id: str
) -> None:
    """Records what a send asked for, as far as it is valid (None or "": not); the phone masked."""
    if phone is not None:
        record.phone, record.international = phone.masked, phone.international
    record.usage_type = usage_type
    record.idempotency_key = request_id or None


def _record_sent(record: RpcRecord, sent: pb.SendCodeResponse) -> None:
    """What an SMS sent (or replayed) leaves in the RPC's record."""
    record.message_id, record.replayed = sent.message_id, sent.replayed
    if not sent.replayed:
        record.yunpian_code = 0
        record.segments, record.fee, record.fee_unit = sent.segment_count, sent.fee, sent.fee_unit


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1_000_000_000))
    return stamp


def verification_message(
    state: VerificationState, delivery: DeliveryState | None = None, *, replayed: bool = False
) -> pb.Verification:
    """The Verification message of a verification's state (and of its latest SMS's delivery)."""
    return pb.Verification(
        verification_id=state.verification_id,
        phone_number=state.phone,
        usage_type=pb.UsageType.Name(USAGE_TYPE_VALUES[state.usage_type]),
        status=_VERIFICATION_STATUSES[state.status],
        expire_time=_timestamp(state.expires_at),
        send_count=state.send_count,
        checks_remaining=state.checks_remaining,
        message_id=state.message_id,
        replayed=replayed,
        delivery=_DELIVERY_STATES[delivery] if delivery else pb.DELIVERY_STATE_UNSPECIFIED,
    )


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

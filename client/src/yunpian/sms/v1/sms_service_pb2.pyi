import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_TYPE_UNSPECIFIED: _ClassVar[UsageType]
    USAGE_TYPE_SIGN_IN: _ClassVar[UsageType]
    USAGE_TYPE_REGISTER: _ClassVar[UsageType]
    USAGE_TYPE_FORGOT_PASSWORD: _ClassVar[UsageType]
    USAGE_TYPE_GENERIC: _ClassVar[UsageType]
    USAGE_TYPE_USER_PERMISSION_VALIDATION: _ClassVar[UsageType]
    USAGE_TYPE_BIND_NEW_IDENTIFIER: _ClassVar[UsageType]
    USAGE_TYPE_MFA_VERIFICATION: _ClassVar[UsageType]
    USAGE_TYPE_BIND_MFA: _ClassVar[UsageType]

class TemplateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPLATE_STATUS_UNSPECIFIED: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_APPROVED: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_PENDING: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_REJECTED: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_NOT_FOUND: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_NOT_CHECKED: _ClassVar[TemplateStatus]

class VerificationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_STATUS_UNSPECIFIED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_PENDING: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_APPROVED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_CANCELED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_EXPIRED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED: _ClassVar[VerificationStatus]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]
    DELIVERY_STATE_UNKNOWN: _ClassVar[DeliveryState]
USAGE_TYPE_UNSPECIFIED: UsageType
USAGE_TYPE_SIGN_IN: UsageType
USAGE_TYPE_REGISTER: UsageType
USAGE_TYPE_FORGOT_PASSWORD: UsageType
USAGE_TYPE_GENERIC: UsageType
USAGE_TYPE_USER_PERMISSION_VALIDATION: UsageType
USAGE_TYPE_BIND_NEW_IDENTIFIER: UsageType
USAGE_TYPE_MFA_VERIFICATION: UsageType
USAGE_TYPE_BIND_MFA: UsageType
TEMPLATE_STATUS_UNSPECIFIED: TemplateStatus
TEMPLATE_STATUS_APPROVED: TemplateStatus
TEMPLATE_STATUS_PENDING: TemplateStatus
TEMPLATE_STATUS_REJECTED: TemplateStatus
TEMPLATE_STATUS_NOT_FOUND: TemplateStatus
TEMPLATE_STATUS_NOT_CHECKED: TemplateStatus
VERIFICATION_STATUS_UNSPECIFIED: VerificationStatus
VERIFICATION_STATUS_PENDING: VerificationStatus
VERIFICATION_STATUS_APPROVED: VerificationStatus
VERIFICATION_STATUS_CANCELED: VerificationStatus
VERIFICATION_STATUS_EXPIRED: VerificationStatus
VERIFICATION_STATUS_MAX_ATTEMPTS_REACHED: VerificationStatus
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState
DELIVERY_STATE_UNKNOWN: DeliveryState

class SendCodeRequest(_message.Message):
    __slots__ = ("phone_number", "code", "usage_type", "request_id")
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    phone_number: str
    code: str
    usage_type: UsageType
    request_id: str
    def __init__(self, phone_number: _Optional[str] = ..., code: _Optional[str] = ..., usage_type: _Optional[_Union[UsageType, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SendCodeResponse(_message.Message):
    __slots__ = ("message_id", "mobile", "international", "segment_count", "fee", "fee_unit", "replayed")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MOBILE_FIELD_NUMBER: _ClassVar[int]
    INTERNATIONAL_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    FEE_UNIT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    mobile: str
    international: bool
    segment_count: int
    fee: str
    fee_unit: str
    replayed: bool
    def __init__(self, message_id: _Optional[str] = ..., mobile: _Optional[str] = ..., international: _Optional[bool] = ..., segment_count: _Optional[int] = ..., fee: _Optional[str] = ..., fee_unit: _Optional[str] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ValidateTemplateRequest(_message.Message):
    __slots__ = ("usage_type", "content", "international", "skip_remote")
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    INTERNATIONAL_FIELD_NUMBER: _ClassVar[int]
    SKIP_REMOTE_FIELD_NUMBER: _ClassVar[int]
    usage_type: UsageType
    content: str
    international: bool
    skip_remote: bool
    def __init__(self, usage_type: _Optional[_Union[UsageType, str]] = ..., content: _Optional[str] = ..., international: _Optional[bool] = ..., skip_remote: _Optional[bool] = ...) -> None: ...

class TemplateProblem(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateTemplateResponse(_message.Message):
    __slots__ = ("valid", "problems", "content", "yunpian_content", "status", "template_id", "status_reason", "estimated_segments")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    YUNPIAN_CONTENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[TemplateProblem]
    content: str
    yunpian_content: str
    status: TemplateStatus
    template_id: str
    status_reason: str
    estimated_segments: int
    def __init__(self, valid: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[TemplateProblem, _Mapping]]] = ..., content: _Optional[str] = ..., yunpian_content: _Optional[str] = ..., status: _Optional[_Union[TemplateStatus, str]] = ..., template_id: _Optional[str] = ..., status_reason: _Optional[str] = ..., estimated_segments: _Optional[int] = ...) -> None: ...

class StartVerificationRequest(_message.Message):
    __slots__ = ("phone_number", "usage_type", "request_id")
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    phone_number: str
    usage_type: UsageType
    request_id: str
    def __init__(self, phone_number: _Optional[str] = ..., usage_type: _Optional[_Union[UsageType, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("verification_id", "phone_number", "usage_type", "status", "expire_time", "send_count", "checks_remaining", "message_id", "replayed", "delivery")
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEND_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    phone_number: str
    usage_type: UsageType
    status: VerificationStatus
    expire_time: _timestamp_pb2.Timestamp
    send_count: int
    checks_remaining: int
    message_id: str
    replayed: bool
    delivery: DeliveryState
    def __init__(self, verification_id: _Optional[str] = ..., phone_number: _Optional[str] = ..., usage_type: _Optional[_Union[UsageType, str]] = ..., status: _Optional[_Union[VerificationStatus, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., send_count: _Optional[int] = ..., checks_remaining: _Optional[int] = ..., message_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., delivery: _Optional[_Union[DeliveryState, str]] = ...) -> None: ...

class CheckVerificationRequest(_message.Message):
    __slots__ = ("verification_id", "phone_number", "usage_type", "code")
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    phone_number: str
    usage_type: UsageType
    code: str
    def __init__(self, verification_id: _Optional[str] = ..., phone_number: _Optional[str] = ..., usage_type: _Optional[_Union[UsageType, str]] = ..., code: _Optional[str] = ...) -> None: ...

class CheckVerificationResponse(_message.Message):
    __slots__ = ("approved", "verification")
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    approved: bool
    verification: Verification
    def __init__(self, approved: _Optional[bool] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class CancelVerificationRequest(_message.Message):
    __slots__ = ("verification_id",)
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    verification_id: str
    def __init__(self, verification_id: _Optional[str] = ...) -> None: ...

class GetDeliveryStatusRequest(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class DeliveryStatus(_message.Message):
    __slots__ = ("message_id", "state", "carrier_code", "carrier_detail", "send_time", "receive_time")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CARRIER_CODE_FIELD_NUMBER: _ClassVar[int]
    CARRIER_DETAIL_FIELD_NUMBER: _ClassVar[int]
    SEND_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    state: DeliveryState
    carrier_code: str
    carrier_detail: str
    send_time: _timestamp_pb2.Timestamp
    receive_time: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., carrier_code: _Optional[str] = ..., carrier_detail: _Optional[str] = ..., send_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

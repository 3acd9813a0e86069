"""Python SDK of the yunpian-sms gRPC service: sends SMS verification codes, runs phone
verifications, checks templates, and says whether each SMS reached the phone."""

from yunpian.sms.v1.sms_service_pb2 import (
    CheckVerificationResponse,
    DeliveryState,
    DeliveryStatus,
    SendCodeResponse,
    TemplateProblem,
    TemplateStatus,
    UsageType,
    ValidateTemplateResponse,
    Verification,
    VerificationStatus,
)

from ._client import DEFAULT_TIMEOUT_S, AsyncSmsClient, SmsClient, new_request_id
from ._errors import (
    CallCancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SmsError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_rpc_error,
)
from ._retry import DEFAULT_RETRY_POLICY, RetryPolicy

# Plain sorted() order (not ruff's isort-style grouping), which tests/test_client.py checks.
__all__ = [  # noqa: RUF022
    "AsyncSmsClient",
    "CallCancelledError",
    "CheckVerificationResponse",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_TIMEOUT_S",
    "DeadlineExceededError",
    "DeliveryState",
    "DeliveryStatus",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SendCodeResponse",
    "SmsClient",
    "SmsError",
    "TemplateProblem",
    "TemplateStatus",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "UsageType",
    "ValidateTemplateResponse",
    "Verification",
    "VerificationStatus",
    "from_rpc_error",
    "new_request_id",
]

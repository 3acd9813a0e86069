"""Usage types: the names the config and the command line use for the proto's UsageType."""

from __future__ import annotations

from typing import Final

from yunpian.sms.v1 import sms_service_pb2 as pb

GENERIC: Final = "Generic"

# The config's and the CLI's CamelCase names, in the proto's order.
USAGE_TYPE_NAMES: Final[dict[int, str]] = {
    pb.USAGE_TYPE_SIGN_IN: "SignIn",
    pb.USAGE_TYPE_REGISTER: "Register",
    pb.USAGE_TYPE_FORGOT_PASSWORD: "ForgotPassword",
    pb.USAGE_TYPE_GENERIC: GENERIC,
    pb.USAGE_TYPE_USER_PERMISSION_VALIDATION: "UserPermissionValidation",
    pb.USAGE_TYPE_BIND_NEW_IDENTIFIER: "BindNewIdentifier",
    pb.USAGE_TYPE_MFA_VERIFICATION: "MfaVerification",
    pb.USAGE_TYPE_BIND_MFA: "BindMfa",
}
USAGE_TYPE_VALUES: Final[dict[str, int]] = {name: value for value, name in USAGE_TYPE_NAMES.items()}

# The usage types a config must give a domestic template for (the others fall back to Generic).
REQUIRED_USAGE_TYPES: Final = ("SignIn", "Register", "ForgotPassword", GENERIC)


def usage_type_name(value: int) -> str | None:
    """Returns the CamelCase name of a UsageType value (UNSPECIFIED is Generic), or None."""
    if value == pb.USAGE_TYPE_UNSPECIFIED:
        return GENERIC
    return USAGE_TYPE_NAMES.get(value)

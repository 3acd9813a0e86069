"""Usage types (usage_types.py): the server's CamelCase names, tied to the proto's enum and to
the SDK's copy of the same table."""

from __future__ import annotations

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_client._client import _USAGE_TYPE_NAMES as SDK_USAGE_TYPE_NAMES
from yunpian_sms_server.usage_types import (
    GENERIC,
    REQUIRED_USAGE_TYPES,
    USAGE_TYPE_NAMES,
    USAGE_TYPE_VALUES,
    usage_type_name,
)

PROTO_PREFIX = "USAGE_TYPE_"


def camel_case(proto_name: str) -> str:
    """USAGE_TYPE_MFA_VERIFICATION -> MfaVerification."""
    words = proto_name.removeprefix(PROTO_PREFIX).split("_")
    return "".join(word.capitalize() for word in words)


# Every value of the proto's UsageType but UNSPECIFIED (which means Generic), in the proto's order.
PROTO_USAGE_TYPES = {
    value: name for name, value in pb.UsageType.items() if value != pb.USAGE_TYPE_UNSPECIFIED
}


def test_the_server_names_every_proto_usage_type_in_the_protos_order_and_nothing_else() -> None:
    assert list(USAGE_TYPE_NAMES) == list(PROTO_USAGE_TYPES)


def test_each_server_name_is_the_proto_name_in_camel_case() -> None:
    assert {
        value: camel_case(name) for value, name in PROTO_USAGE_TYPES.items()
    } == USAGE_TYPE_NAMES


def test_the_sdk_and_the_server_give_the_same_names_the_same_values() -> None:
    assert dict(SDK_USAGE_TYPE_NAMES) == USAGE_TYPE_VALUES
    assert list(SDK_USAGE_TYPE_NAMES) == list(USAGE_TYPE_VALUES)  # listed in one order


def test_the_values_by_name_are_the_names_by_value_turned_around() -> None:
    assert {name: value for value, name in USAGE_TYPE_NAMES.items()} == USAGE_TYPE_VALUES


def test_unspecified_is_generic_and_an_unknown_value_has_no_name() -> None:
    assert usage_type_name(pb.USAGE_TYPE_UNSPECIFIED) == GENERIC
    assert usage_type_name(pb.USAGE_TYPE_BIND_MFA) == "BindMfa"
    assert usage_type_name(max(pb.UsageType.values()) + 1) is None


def test_the_required_usage_types_are_named_ones_including_generic() -> None:
    assert set(REQUIRED_USAGE_TYPES) <= set(USAGE_TYPE_VALUES)
    assert GENERIC in REQUIRED_USAGE_TYPES

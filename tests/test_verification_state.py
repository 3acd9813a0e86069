"""What a verification keeps of its codes (keyed hashes), how the secret rotates, and the ids and
codes the service makes."""

from __future__ import annotations

import string
from collections import Counter
from typing import Final

import pytest

from yunpian_sms_server.errors import Reason, ServiceError
from yunpian_sms_server.verification_codes import check_typed_code, new_code
from yunpian_sms_server.verification_state import (
    ID_PREFIX,
    CodeHasher,
    VerificationState,
    VerificationStatus,
    new_verification_id,
)
from yunpian_sms_server.verifications import MAX_VERIFICATION_ID_LENGTH, check_verification_id

OLD: Final = b"old-secret-0123456789abcdef-0123456789"
NEW: Final = b"new-secret-0123456789abcdef-0123456789"
OTHER: Final = b"other-secret-0123456789abcdef-01234567"
VID: Final = "vf_0123456789abcdefghijklmnopqrstuvwxyzABCD"
CODE: Final = "482915"


def test_a_hash_is_a_keyed_hex_digest_that_holds_nothing_of_the_code() -> None:
    hashed = CodeHasher(NEW).hash(VID, CODE)
    assert len(hashed) == 64
    assert set(hashed) <= set(string.hexdigits.lower())
    assert CODE not in hashed
    # Keyed: another secret, another id or another code hash differently.
    assert CodeHasher(OLD).hash(VID, CODE) != hashed
    assert CodeHasher(NEW).hash(VID + "x", CODE) != hashed
    assert CodeHasher(NEW).hash(VID, "482916") != hashed
    # The id and the code are kept apart: ("…1", "23456") is not ("…", "123456").
    assert CodeHasher(NEW).hash(VID + "4", "82915") != hashed


def matches(hasher: CodeHasher, verification_id: str, code: str, hashes: list[str]) -> bool:
    """Whether a store holding `hashes` finds `code` among them, as the stores compare."""
    return bool(set(hasher.candidates(verification_id, code)) & set(hashes))


def test_a_code_matches_only_its_own_verifications_hashes() -> None:
    hasher = CodeHasher(NEW)
    hashes = [hasher.hash(VID, code) for code in ("111111", CODE, "222222")]
    assert matches(hasher, VID, CODE, hashes)  # any of the codes sent, wherever it is
    assert matches(hasher, VID, "111111", hashes)
    assert not matches(hasher, VID, "333333", hashes)
    assert not matches(hasher, VID, CODE, [])
    # The same code sent for another verification does not check here.
    assert not matches(hasher, "vf_another", CODE, hashes)
    assert not matches(hasher, VID, CODE, [hasher.hash("vf_another", CODE)])


def test_a_code_hashed_under_the_previous_secret_checks_after_a_rotation() -> None:
    before = CodeHasher(OLD).hash(VID, CODE)
    rotated = CodeHasher(NEW, [OLD])
    assert matches(rotated, VID, CODE, [before])
    assert rotated.hash(VID, CODE) == CodeHasher(NEW).hash(VID, CODE)  # new codes: new secret
    assert rotated.candidates(VID, CODE) == (CodeHasher(NEW).hash(VID, CODE), before)
    assert matches(rotated, VID, CODE, [rotated.hash(VID, CODE)])
    assert not matches(rotated, VID, "000000", [before])
    # Once the old secret is dropped, or was never one of ours, the code no longer checks.
    assert not matches(CodeHasher(NEW), VID, CODE, [before])
    assert not matches(CodeHasher(NEW, [OTHER]), VID, CODE, [before])


def test_ids_are_unguessable_printable_and_accepted_back() -> None:
    ids = [new_verification_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for vid in ids[:100]:
        assert vid.startswith(ID_PREFIX)
        # At least 128 random bits: 6 bits per base64url character.
        assert len(vid) - len(ID_PREFIX) >= 128 / 6
        assert vid.isascii()
        assert vid.isprintable()
        check_verification_id(vid)


@pytest.mark.parametrize(
    "verification_id",
    [
        "",
        ID_PREFIX[:-1],
        "xx_abcdef",
        ID_PREFIX + "a" * (MAX_VERIFICATION_ID_LENGTH - len(ID_PREFIX) + 1),
        ID_PREFIX + "a" * 10_240,
        ID_PREFIX + "abc def",
        ID_PREFIX + "abc/def+",
        ID_PREFIX + "abc\x00",
        ID_PREFIX + "é",
    ],
)
def test_anything_that_cannot_be_an_id_is_invalid_and_names_its_field(
    verification_id: str,
) -> None:
    with pytest.raises(ServiceError) as caught:
        check_verification_id(verification_id)
    assert caught.value.reason is Reason.INVALID_VERIFICATION_ID
    assert caught.value.field_violation is not None
    assert caught.value.field_violation.field == "verification_id"


@pytest.mark.parametrize("length", [4, 6, 10])
def test_codes_are_length_digits_every_digit_at_every_place(length: int) -> None:
    codes = [new_code(length) for _ in range(3000)]
    assert all(len(code) == length and code.isascii() and code.isdigit() for code in codes)
    for place in range(length):
        counts = Counter(code[place] for code in codes)
        assert set(counts) == set(string.digits)  # leading zeros too
        assert max(counts.values()) < 3 * min(counts.values())
    for code in codes[:50]:
        check_typed_code(code, length)


@pytest.mark.parametrize(
    "typed", ["12345", "1234567", "12a456", " 12345", "１２３４５６", "١٢٣٤٥٦", "12345\n", "+12345"]
)
def test_a_typed_code_must_be_exactly_code_length_ascii_digits(typed: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_typed_code(typed, 6)
    assert caught.value.reason is Reason.INVALID_CODE
    assert caught.value.field_violation is not None
    assert caught.value.field_violation.field == "code"
    assert typed not in caught.value.message


def test_a_pending_verification_past_its_expiry_is_seen_expired_and_checks_never_go_negative() -> (
    None
):
    state = VerificationState(
        verification_id=VID,
        caller="c",
        phone="13800138000",
        usage_type="Generic",
        status=VerificationStatus.PENDING,
        expires_at=100.0,
        checks_used=7,
        max_checks=5,
    )
    assert state.checks_remaining == 0
    assert state.as_seen_at(99.9).status is VerificationStatus.PENDING
    assert state.as_seen_at(100.0).status is VerificationStatus.EXPIRED
    approved = VerificationState(
        verification_id=VID,
        caller="c",
        phone="13800138000",
        usage_type="Generic",
        status=VerificationStatus.APPROVED,
        expires_at=100.0,
    )
    assert approved.as_seen_at(200.0).status is VerificationStatus.APPROVED
    assert "code_hashes" not in repr(approved)

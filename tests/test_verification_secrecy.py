"""The code is a secret: no store holds it, no log line carries it, and its hash survives a
rotation of the verification secret.

The codes here are ten digits (`code_length = 10`): a search for one cannot hit a timestamp,
an id or a count by chance. Each code is looked for in every encoding the server could have used
to keep it: the digits as text (UTF-8, UTF-16, UTF-32), hex and base64 of the digits, and the
code as an integer (its bytes either way round, its hex).
"""

from __future__ import annotations

import base64
import io
from collections import deque
from collections.abc import Iterator
from typing import Any, Final

import pytest
import redis.asyncio as aioredis
from support import RedisServer, StartServer, fresh_database, make_config
from verification_support import (
    OTHER_SECRET,
    SECRET,
    code_of,
    phone_numbers,
    redis_store,
    verifier,
    verify_section,
)

from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import RunningSandbox

CODE_LENGTH: Final = 10
SECRECY_DB: Final = 11
ROTATION_DB: Final = 12
NUMBERS: Final = phone_numbers("135")
# The integer forms of a code are looked for only when they are this long: shorter byte strings
# turn up by chance in kilobytes of data.
MIN_INTEGER_BYTES: Final = 4


def encodings(code: str) -> dict[str, bytes]:
    """Every form of the code the server could have kept, by name."""
    digits = code.encode()
    forms = {
        "text": digits,
        "utf-16-le": code.encode("utf-16-le"),
        "utf-16-be": code.encode("utf-16-be"),
        "utf-32-le": code.encode("utf-32-le"),
        "utf-32-be": code.encode("utf-32-be"),
        "hex": digits.hex().encode(),
        "HEX": digits.hex().upper().encode(),
    }
    # Base64 of the digits at each alignment within a longer value: the characters that encode
    # only the code's bytes.
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + digits)
            whole = (offset + len(digits)) // 3 * 4  # characters of whole groups
            first = 4 if offset else 0  # the group that also encodes the padding
            forms[f"{name}@{offset}"] = encoded[first:whole]
    number = int(code)
    size = (number.bit_length() + 7) // 8
    if size >= MIN_INTEGER_BYTES:
        forms["int-be"] = number.to_bytes(size, "big")
        forms["int-le"] = number.to_bytes(size, "little")
        forms["int-hex"] = f"{number:x}".encode()
        forms["int-HEX"] = f"{number:X}".encode()
    return forms


def found_in(data: bytes, codes: list[str]) -> list[str]:
    """The (code, encoding) pairs found in `data`."""
    return [
        f"{code} as {name}"
        for code in codes
        for name, form in encodings(code).items()
        if form in data
    ]


def test_the_search_finds_each_encoding_inside_other_data() -> None:
    code = "4829150376"
    for name, form in encodings(code).items():
        assert found_in(b"prefix:" + form + b":suffix", [code]), name
    assert found_in(b"x" + base64.b64encode(b"ab" + code.encode()), [code])
    assert found_in(b"hashes=" + code.encode("utf-16-le"), [code])
    assert not found_in(b"4829150377 0482915037", [code])


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from `root` through containers, attributes and slots."""
    seen: set[int] = set()
    stack: deque[object] = deque([root])
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, str | bytes | bytearray | int | float | bool | type(None)):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset | deque):
            stack.extend(item)
        else:
            stack.extend(getattr(item, "__dict__", {}).values())
            for cls in type(item).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(item, slot):
                        stack.append(getattr(item, slot))


def as_bytes(item: object) -> bytes | None:
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    return None


async def start_and_resend(
    server: SmsServer, sandbox: RunningSandbox, count: int = 2
) -> tuple[list[str], list[str]]:
    """Starts `count` verifications, each with a resend and a request_id; their ids and codes."""
    ids, codes = [], []
    async with verifier(server.port) as calls:
        for index in range(count):
            phone = next(NUMBERS)
            first = await calls.start(phone, request_id=f"secrecy-{phone}-{index}")
            second = await calls.start(phone)
            ids.append(first.verification_id)
            codes += [code_of(sandbox, first), code_of(sandbox, second)]
    return ids, codes


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.sandbox.enforce_limits = False
    return sandbox


async def test_the_memory_store_and_the_logs_hold_no_code(
    start_server: StartServer, quiet_sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    server = await start_server(make_config(verify=verify_section(code_length=CODE_LENGTH)))
    ids, codes = await start_and_resend(server, quiet_sandbox)
    assert all(len(code) == CODE_LENGTH for code in codes)

    held = list(reachable(server._store))
    texts = [data for item in held if (data := as_bytes(item)) is not None]
    # The walk reached the verifications and their two hashes each.
    assert set(ids) <= {item for item in held if isinstance(item, str)}
    hashes = [item for item in held if isinstance(item, str) and len(item) == 64]
    assert len(hashes) >= 2 * len(ids)
    leaks = [leak for data in texts for leak in found_in(data, codes)]
    numbers = {int(code) for code in codes}
    leaks += [repr(item) for item in held if isinstance(item, int | float) and item in numbers]
    assert leaks == []

    log = log_output.getvalue().encode()
    assert all(vid.encode() in log for vid in ids)
    assert found_in(log, codes) == []


async def redis_contents(url: str) -> list[tuple[bytes, bytes, int]]:
    """Every key of the database: (key, its value's bytes, its PTTL), through SCAN and TYPE."""
    redis = aioredis.Redis.from_url(url)
    contents = []
    try:
        async for key in redis.scan_iter(count=100):
            kind = (await redis.type(key)).decode()
            parts: list[Any]
            if kind == "string":
                parts = [await redis.get(key)]
            elif kind == "hash":
                parts = [part for pair in (await redis.hgetall(key)).items() for part in pair]
            elif kind == "list":
                parts = await redis.lrange(key, 0, -1)
            elif kind == "set":
                parts = list(await redis.smembers(key))
            elif kind == "zset":
                pairs = await redis.zrange(key, 0, -1, withscores=True)
                parts = [part for member, score in pairs for part in (member, repr(score))]
            elif kind == "stream":
                entries = await redis.xrange(key)
                parts = [
                    part
                    for entry_id, fields in entries
                    for part in (entry_id, *fields.keys(), *fields.values())
                ]
            else:
                raise AssertionError(f"key {key!r} has a type the scan does not read: {kind}")
            value = b"\x00".join(
                part if isinstance(part, bytes) else str(part).encode() for part in parts
            )
            contents.append((key, value, await redis.pttl(key)))
    finally:
        await redis.aclose()
    return contents


async def test_redis_holds_no_code_and_every_key_expires(
    start_server: StartServer,
    quiet_sandbox: RunningSandbox,
    redis_server: RedisServer,
    log_output: io.StringIO,
) -> None:
    url = await fresh_database(redis_server, SECRECY_DB)
    server = await start_server(
        make_config(
            verify=verify_section(code_length=CODE_LENGTH),
            store=redis_store(url),
            limits={"per_phone": ["100/1h"]},  # rate-limit logs in Redis too
        )
    )
    ids, codes = await start_and_resend(server, quiet_sandbox)
    contents = await redis_contents(url)
    keys = [key for key, _, _ in contents]
    # Sanity: the scan saw the verifications, their hashes, the request_id records and the logs.
    for vid in ids:
        assert any(vid.encode() in key for key in keys), vid
    assert any(b"idem:" in key for key in keys)
    assert any(b"rate:" in key for key in keys)
    leaks = [
        f"{key!r}: {leak}"
        for key, value, _ in contents
        for leak in found_in(key + b"\x00" + value, codes)
    ]
    assert leaks == []
    assert [key for key, _, ttl in contents if ttl <= 0] == []  # nothing is kept forever
    assert found_in(log_output.getvalue().encode(), codes) == []


async def test_a_code_checks_after_the_secret_is_rotated_and_not_without_the_old_one(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    store = redis_store(await fresh_database(redis_server, ROTATION_DB))

    async def serve(secret: str, previous: list[str]) -> SmsServer:
        verify = verify_section(secret=secret, previous_secrets=previous)
        return await start_server(make_config(verify=verify, store=store))

    before = await serve(SECRET, [])
    async with verifier(before.port) as calls:
        kept = await calls.start(next(NUMBERS))
        dropped = await calls.start(next(NUMBERS))
    await before.stop()

    # Restarted with a new secret, the old one kept as previous: the code still checks.
    rotated = await serve(OTHER_SECRET, [SECRET])
    async with verifier(rotated.port) as calls:
        still = await calls.check(kept.verification_id, code_of(quiet_sandbox, kept))
        fresh = await calls.start(next(NUMBERS))
    await rotated.stop()

    # Once the old secret is dropped, its codes no longer check; codes of the new one do.
    after = await serve(OTHER_SECRET, [])
    async with verifier(after.port) as calls:
        gone = await calls.check(dropped.verification_id, code_of(quiet_sandbox, dropped))
        new = await calls.check(fresh.verification_id, code_of(quiet_sandbox, fresh))

    assert still.approved
    assert not gone.approved
    assert gone.verification.checks_remaining == 4
    assert new.approved

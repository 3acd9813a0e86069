"""The operator and caller documentation in docs/ holds to the code it describes.

Each test reads a table of a page and compares it with the code: every reason and its gRPC code
(docs/errors.md), every YunPian answer code, every configuration key with its default and every
environment variable (docs/configuration.md), every metric with its type and labels and every key
of the `rpc` log event (docs/metrics.md), and the numbers the shutdown depends on as the
manifests ship them (docs/operations.md). A failure says what to add or change, and where.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
import yaml
from prometheus_client import PlatformCollector, ProcessCollector
from support import log_events

import yunpian_sms_server
from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server import config as config_module
from yunpian_sms_server.config import KNOWN_KEYS, ConfigError, parse_config
from yunpian_sms_server.errors import Reason
from yunpian_sms_server.metrics import Metrics
from yunpian_sms_server.rpc_envelope import RPC_NAMES
from yunpian_sms_server.rpc_record import RpcRecord
from yunpian_sms_server.statuses import STATUS_CODES
from yunpian_sms_server.usage_types import REQUIRED_USAGE_TYPES, USAGE_TYPE_VALUES
from yunpian_sms_server.yunpian import provider_error

REPO: Final = Path(__file__).resolve().parent.parent
DOCS: Final = REPO / "docs"
ERRORS: Final = DOCS / "errors.md"
CONFIGURATION: Final = DOCS / "configuration.md"
METRICS: Final = DOCS / "metrics.md"
OPERATIONS: Final = DOCS / "operations.md"
KUBERNETES: Final = REPO / "deploy" / "kubernetes"
NONE: Final = "—"  # how a table says "no value"
# A table cell boundary: a pipe not escaped with a backslash.
_CELL_BOUNDARY: Final = re.compile(r"(?<!\\)\|")
_TICKED: Final = re.compile(r"`([^`]+)`")


# --- Reading the pages -------------------------------------------------------------------


def prose(path: Path) -> str:
    """A page without its fenced code blocks (whose `# comments` are no headings)."""
    text = path.read_text(encoding="utf-8")
    return re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)


def section(path: Path, heading: str) -> str:
    """The text under a `## heading` (up to the next heading of level 2 or above)."""
    text = prose(path)
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match, f"{path.relative_to(REPO)} has no section '## {heading}'"
    return match.group(1)


def rows(text: str) -> Iterator[list[str]]:
    """The body rows of every markdown table in the text, as stripped cells."""
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [cell.strip() for cell in _CELL_BOUNDARY.split(line)[1:-1]]
        yield cells


def ticked(cell: str) -> list[str]:
    """The `code` spans of a cell, in order."""
    return _TICKED.findall(cell)


def config_sections() -> dict[str, dict[str, list[str]]]:
    """docs/configuration.md's tables: `[table]` heading -> key -> its row's cells."""
    text = prose(CONFIGURATION)
    found: dict[str, dict[str, list[str]]] = {}
    for match in re.finditer(r"^## `\[([^\]]+)\]`\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        table = found.setdefault(match.group(1), {})
        for cells in rows(match.group(2)):
            keys = ticked(cells[0])
            if len(cells) == len(CONFIG_COLUMNS) and len(keys) == 1 and cells[0] == f"`{keys[0]}`":
                table[keys[0]] = cells
    return found


# --- docs/errors.md ------------------------------------------------------------------------

ERROR_COLUMNS: Final = ("reason", "gRPC code", "details", "what it means", "what to do")


def documented_reasons() -> list[tuple[str, str, list[str]]]:
    """(reason, gRPC code, cells) of every row of the reason tables, in order."""
    found = []
    for cells in rows(section(ERRORS, "Every reason")):
        first, second = ticked(cells[0]), ticked(cells[1]) if len(cells) > 1 else []
        if len(first) == 1 and first[0].isupper() and len(second) == 1:
            found.append((first[0], second[0], cells))
    return found


def _reason_row(reason: Reason) -> str:
    code = STATUS_CODES[reason].name
    return (
        f"| `{reason.value}` | `{code}` | <details it carries besides ErrorInfo, or —> "
        "| <what it means; which RPCs answer it> | <retry? with the same request_id? what to "
        "tell the user?> |"
    )


def test_every_reason_is_in_the_error_tables_with_its_grpc_code() -> None:
    codes = {reason: code for reason, code, _ in documented_reasons()}
    problems = [
        "add a row to the table of its group under '## Every reason' (or a new '### group' "
        f"with the same columns): {_reason_row(reason)}"
        for reason in Reason
        if reason.value not in codes
    ]
    problems += [
        f"the row of {reason.value} gives `{codes[reason.value]}`, but statuses.STATUS_CODES "
        f"says `{STATUS_CODES[reason].name}`: fix its second column"
        for reason in Reason
        if reason.value in codes and codes[reason.value] != STATUS_CODES[reason].name
    ]
    assert not problems, "docs/errors.md:\n" + "\n".join(problems)


def test_the_error_tables_hold_no_unknown_or_repeated_reason() -> None:
    documented = [reason for reason, _, _ in documented_reasons()]
    known = {reason.value for reason in Reason}
    stale = sorted(set(documented) - known)
    assert not stale, f"docs/errors.md documents reasons errors.Reason lacks; remove: {stale}"
    repeated = sorted({reason for reason in documented if documented.count(reason) > 1})
    assert not repeated, f"docs/errors.md documents these reasons twice; keep one row: {repeated}"


def test_every_reason_row_says_what_it_means_and_what_to_do() -> None:
    for reason, _, cells in documented_reasons():
        assert len(cells) == len(ERROR_COLUMNS), (
            f"docs/errors.md: the row of {reason} needs the {len(ERROR_COLUMNS)} columns "
            f"{ERROR_COLUMNS}"
        )
        empty = [column for column, cell in zip(ERROR_COLUMNS, cells, strict=True) if not cell]
        assert not empty, f"docs/errors.md: the row of {reason} leaves {empty} empty"


def yunpian_rows() -> list[list[str]]:
    return [
        cells
        for cells in rows(section(ERRORS, "YunPian's answer codes"))
        if len(cells) == 5 and cells[0] != "YunPian code"
    ]


def _retry_cell(seconds: float | None) -> str:
    return NONE if seconds is None else f"{seconds:g} s"


def _yunpian_row(code: int) -> str:
    error = provider_error(code, "", "", "")
    return (
        f"| `{code}` | <YunPian's msg> (<its meaning>) | `{error.reason.value}` "
        f"| `{STATUS_CODES[error.reason].name}` | {_retry_cell(error.retry_after_s)} |"
    )


def test_every_yunpian_code_the_service_maps_is_in_the_table_as_mapped() -> None:
    documented: dict[int, list[str]] = {}
    for cells in yunpian_rows():
        if re.fullmatch(r"`-?\d+`", cells[0]):
            documented[int(ticked(cells[0])[0])] = cells
    # Every code the service maps to a reason of its own (the rest are PROVIDER_REJECTED_REQUEST).
    mapped = [
        code
        for code in range(-1000, 1001)
        if provider_error(code, "", "", "").reason is not Reason.PROVIDER_REJECTED_REQUEST
    ]
    problems = [
        f"add to '## YunPian's answer codes': {_yunpian_row(code)}"
        for code in mapped
        if code not in documented
    ]
    for code, cells in documented.items():
        error = provider_error(code, "", "", "")
        expected = [
            error.reason.value,
            STATUS_CODES[error.reason].name,
            _retry_cell(error.retry_after_s),
        ]
        actual = [*ticked(cells[2])[:1], *ticked(cells[3])[:1], cells[4]]
        if actual != expected:
            problems.append(
                f"YunPian code {code} is documented as {actual}, but yunpian.py maps it to "
                f"{expected} (reason, gRPC code, RetryInfo): fix its row"
            )
    assert not problems, "docs/errors.md:\n" + "\n".join(problems)


def test_the_yunpian_table_says_what_the_other_codes_become() -> None:
    special = {cells[0]: ticked(cells[2])[0] for cells in yunpian_rows() if ticked(cells[2])}
    phone = provider_error(2, "", "参数 mobile 格式不正确", "").reason.value
    other = provider_error(1, "", "", "").reason.value
    assert special.get("`2` with `mobile` in its detail") == phone, (
        "docs/errors.md: the row '`2` with `mobile` in its detail' must name " + phone
    )
    assert special.get("any other code") == other, (
        "docs/errors.md: the row 'any other code' must name " + other
    )


# --- docs/configuration.md -----------------------------------------------------------------

CONFIG_COLUMNS: Final = ("key", "type", "default", "allowed values", "env override", "what")
# The heading of each table in docs/configuration.md, by its name in config.KNOWN_KEYS.
HEADINGS: Final = {"auth.callers.*": "auth.callers.NAME"}
# Keys without a default: required where their table is present, or "absent" means "not set".
NO_DEFAULT: Final = frozenset(
    {
        "server.tls.cert",
        "server.tls.key",
        "server.tls.client_ca",
        "auth.callers.*.token_sha256",
        *(f"templates.{name}" for name in USAGE_TYPE_VALUES if name not in REQUIRED_USAGE_TYPES),
        *(f"templates.international.{name}" for name in USAGE_TYPE_VALUES),
    }
)
PROBE_TOKEN_SHA256: Final = "0" * 64


def documented_tables() -> dict[str, frozenset[str]]:
    """Every table the documentation must describe, with its keys (KNOWN_KEYS, the usage types
    of the template tables)."""
    tables = {name: keys for name, keys in KNOWN_KEYS.items() if name}
    tables["templates"] = tables["templates"] | frozenset(USAGE_TYPE_VALUES)
    tables["templates.international"] = frozenset(USAGE_TYPE_VALUES)
    for name in KNOWN_KEYS[""]:
        tables.setdefault(name, frozenset())
    return tables


def _config_row(table: str, key: str) -> str:
    return (
        f"| `{key}` | <string, number, integer, boolean, list of strings or table> "
        f"| <its default as TOML, e.g. `10.0`, or {NONE}> | <allowed values> "
        f"| <its environment variable in backticks, or {NONE}> | <what it does> |"
    )


def test_every_table_has_a_section() -> None:
    sections = config_sections()
    missing = [
        HEADINGS.get(t, t) for t in documented_tables() if HEADINGS.get(t, t) not in sections
    ]
    assert not missing, (
        "docs/configuration.md has no section for these tables; add a '## `[TABLE]`' heading "
        "with a table of the columns " + repr(CONFIG_COLUMNS) + ": " + repr(missing)
    )


def test_every_key_has_a_row_under_its_table() -> None:
    sections = config_sections()
    problems = []
    for table, keys in documented_tables().items():
        heading = HEADINGS.get(table, table)
        documented = sections.get(heading, {})
        problems += [
            f"under '## `[{heading}]`' add: {_config_row(table, key)}"
            for key in sorted(keys - set(documented))
        ]
    assert not problems, "docs/configuration.md lacks these keys:\n" + "\n".join(problems)


def test_no_row_for_a_key_the_server_does_not_know() -> None:
    headings = {HEADINGS.get(t, t): keys for t, keys in documented_tables().items()}
    stale = [
        f"[{heading}] {key}"
        for heading, documented in config_sections().items()
        for key in documented
        if key not in headings.get(heading, frozenset())
    ]
    assert not stale, f"docs/configuration.md documents keys config.py refuses; remove: {stale}"


def _table_data(table: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A config file (as parsed TOML) holding `values` in `table`, and what that table needs to
    be valid: the required templates, a caller's token."""
    if table == "auth.callers.*":
        caller = {"token_sha256": PROBE_TOKEN_SHA256, **values}
        return {"auth": {"callers": {"probe": caller}}}
    if table == "templates":
        required = {
            name: parse_config({}, env={}).templates.domestic[name] for name in REQUIRED_USAGE_TYPES
        }
        return {"templates": {**required, **values}}
    data: dict[str, Any] = {}
    inner = data
    *parents, last = table.split(".")
    for parent in parents:
        inner = inner.setdefault(parent, {})
    inner[last] = dict(values)
    return data


def _default_problem(table: str, key: str, cell: str) -> str | None:
    """Why a documented default is wrong, or None when the code's default is that value."""
    dotted = f"{table}.{key}"
    if cell == NONE:
        if dotted in NO_DEFAULT:
            return None
        return f"{dotted} is documented without a default ({NONE}); give its default as TOML"
    if dotted in NO_DEFAULT:
        return f"{dotted} has no default in config.py; write {NONE} in its Default column"
    literals = ticked(cell)
    if len(literals) != 1 or cell != f"`{literals[0]}`":
        return f"{dotted}: write the default as one TOML value in backticks, not {cell!r}"
    try:
        value = tomllib.loads(f"v = {literals[0]}")["v"]
    except tomllib.TOMLDecodeError:
        return f"{dotted}: the default {literals[0]!r} is not a TOML value"
    base = _table_data(table, {})
    try:
        with_default = parse_config(_table_data(table, {key: value}), env={})
    except ConfigError as error:
        return f"{dotted}: the documented default {literals[0]} is refused by config.py: {error}"
    if with_default != parse_config(base, env={}):
        return (
            f"{dotted}: the documented default {literals[0]} is not the code's default "
            "(setting it gives another configuration than leaving it out); fix the Default "
            "column"
        )
    return None


def test_every_documented_default_is_the_codes_default() -> None:
    problems = []
    headings = {HEADINGS.get(t, t): t for t in documented_tables()}
    for heading, documented in config_sections().items():
        table = headings.get(heading)
        if table is None:
            continue
        for key, cells in documented.items():
            if cells[1] == "table":
                continue
            problem = _default_problem(table, key, cells[2])
            if problem is not None:
                problems.append(problem)
    assert not problems, "docs/configuration.md: " + "\n".join(problems)


def test_every_row_of_type_table_has_a_section() -> None:
    sections = config_sections()
    for heading, documented in sections.items():
        for key, cells in documented.items():
            if cells[1] == "table":
                sub = f"{heading}.{key}"
                assert sub in sections or f"{sub}.NAME" in sections, (
                    f"docs/configuration.md: [{heading}] {key} is a table; add its "
                    f"'## `[{sub}]`' section"
                )


def environment_variables() -> set[str]:
    """Every environment variable name config.py spells out; a family of variables (a name that
    ends in '_', as YUNPIAN_SMS_TOKEN_SHA256_) as its prefix followed by "<".
    """
    tree = ast.parse(Path(config_module.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"YUNPIAN_[A-Z0-9_]*[A-Z0-9]", node.value):
                names.add(node.value)
            elif re.fullmatch(r"YUNPIAN_[A-Z0-9_]*_", node.value):
                names.add(node.value + "<")
    return names


def _family(name: str) -> str:
    """A variable's name, or its family's prefix and "<" (YUNPIAN_SMS_TOKEN_SHA256_<CALLER>)."""
    return re.sub(r"<[^>]*>?$", "<", name)


def environment_table() -> dict[str, list[str]]:
    """'## Environment variables': name -> cells; a family `PREFIX_<CALLER>` as `PREFIX_<`."""
    return {
        _family(ticked(cells[0])[0]): cells
        for cells in rows(section(CONFIGURATION, "Environment variables"))
        if ticked(cells[0])
    }


def test_every_environment_variable_of_config_py_is_documented() -> None:
    table = environment_table()
    missing = sorted(environment_variables() - set(table))
    assert not missing, (
        "config.py reads environment variables docs/configuration.md does not list; add to "
        "'## Environment variables' a row `| `NAME` | `table.key` it overrides | what it holds |` "
        "(a family of variables, PREFIX_<: as `PREFIX_<WHAT>`), and put `NAME` in the "
        "'env override' column of that key's row: " + repr(missing)
    )
    stale = sorted(set(table) - environment_variables())
    assert not stale, (
        f"docs/configuration.md lists environment variables config.py does not read: {stale}"
    )


# (value in the file, the same value as an environment variable): candidates a key may take.
ENV_SAMPLES: Final[tuple[tuple[Any, str], ...]] = (
    ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("ab" * 32, "ab" * 32),
    ("memory://elsewhere", "memory://elsewhere"),
    ("127.0.0.1:50099", "127.0.0.1:50099"),
    (7.0, "7"),
    (7, "7"),
    (True, "true"),
)
# The caller of _table_data's [auth.callers] table, as a variable family names it.
PROBE_CALLER_VARIABLE: Final = "PROBE"


def _value(config: Any, table: str, key: str) -> Any:
    """A key's value in a parsed Config (the probe caller's, for [auth.callers.NAME])."""
    if table == "auth.callers.*":
        return getattr(config.auth.callers[0], key)
    section_value = getattr(config, table, None)
    assert section_value is not None, (
        f"tests/test_docs.py: teach _value where Config keeps [{table}] {key}"
    )
    return getattr(section_value, key)


def _overrides(name: str, table: str, key: str) -> bool | None:
    """Whether the variable overrides the key (None: no sample value fits the key)."""
    variable = re.sub(r"<[^>]*>?$", PROBE_CALLER_VARIABLE, name)
    base = _table_data(table, {})
    default = _value(parse_config(base, env={}), table, key)
    for file_value, env_value in ENV_SAMPLES:
        try:
            in_file = _value(
                parse_config(_table_data(table, {key: file_value}), env={}), table, key
            )
        except ConfigError:
            continue
        if in_file == default:
            continue
        try:
            return _value(parse_config(base, env={variable: env_value}), table, key) == in_file
        except ConfigError:
            return False
    return None


def _dotted_key(text: str) -> str:
    """A documented `table.key`, its table named as in KNOWN_KEYS (auth.callers.NAME: *)."""
    for table, heading in HEADINGS.items():
        if text.startswith(heading + "."):
            return table + text[len(heading) :]
    return text


def test_each_override_is_on_the_row_of_the_key_it_overrides() -> None:
    env_table = environment_table()
    by_key = {
        _dotted_key(ticked(cells[1])[0]): name
        for name, cells in env_table.items()
        if ticked(cells[1]) and "." in ticked(cells[1])[0]
    }
    headings = {HEADINGS.get(t, t): t for t in documented_tables()}
    on_rows = {}
    for heading, documented in config_sections().items():
        for key, cells in documented.items():
            for name in ticked(cells[4]):
                on_rows[f"{headings.get(heading, heading)}.{key}"] = _family(name)
    assert on_rows == by_key, (
        "docs/configuration.md: the 'env override' columns of the key tables "
        f"({on_rows}) disagree with '## Environment variables' ({by_key})"
    )
    for dotted, name in by_key.items():
        table, key = dotted.rsplit(".", 1)
        overrides = _overrides(name, table, key)
        assert overrides is not None, (
            f"tests/test_docs.py: add to ENV_SAMPLES a value {dotted} accepts, to check that "
            f"{name} overrides it"
        )
        assert overrides, f"docs/configuration.md says {name} overrides {dotted}; it does not"


# --- docs/metrics.md -----------------------------------------------------------------------


# The metrics of prometheus_client's own collectors in the registry, which the endpoint
# section names (process_*, python_info), not the table.
LIBRARY_COLLECTORS: Final = (ProcessCollector, PlatformCollector)
# The metric names the table documents: the service's own, and grpc-ecosystem's.
DOCUMENTED_PREFIXES: Final = ("yunpian_sms_", "grpc_server_")


def registered_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric Metrics() registers: exposed name -> (type, label names)."""
    registry = Metrics().registry
    # prometheus_client has no public list of a registry's collectors.
    collectors = list(registry._collector_to_names)
    found = {}
    for collector in collectors:
        if isinstance(collector, LIBRARY_COLLECTORS):
            continue
        kind = collector._type
        name = collector._name + ("_total" if kind == "counter" else "")
        found[name] = (kind, tuple(collector._labelnames))
    return found


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    found = {}
    for cells in rows(section(METRICS, "Every metric")):
        names = ticked(cells[0])
        if len(names) == 1 and names[0].startswith(DOCUMENTED_PREFIXES):
            found[names[0]] = (cells[1], tuple(ticked(cells[2])))
    return found


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    documented = documented_metrics()
    problems = []
    for name, (kind, labels) in registered_metrics().items():
        label_cell = ", ".join(f"`{label}`" for label in labels) or NONE
        row = f"| `{name}` | {kind} | {label_cell} | <what it counts, when it changes> |"
        if name not in documented:
            problems.append(f"add to '## Every metric': {row} (and an alert if it needs one)")
        elif documented[name] != (kind, labels):
            problems.append(f"the row of {name} says {documented[name]}; make it: {row}")
    assert not problems, "docs/metrics.md:\n" + "\n".join(problems)
    stale = sorted(set(documented) - set(registered_metrics()))
    assert not stale, f"docs/metrics.md documents metrics Metrics() lacks; remove: {stale}"


def test_every_label_has_its_values_documented() -> None:
    documented = {
        ticked(cells[0])[0] for cells in rows(section(METRICS, "Label values")) if ticked(cells[0])
    }
    labels = {label for _, names in registered_metrics().values() for label in names}
    missing = sorted(labels - documented)
    assert not missing, (
        "docs/metrics.md: add to '## Label values' a row `| `LABEL` | <its values> |` for: "
        + repr(missing)
    )


async def test_the_rpc_event_keys_are_documented(log_output: Any, client: AsyncSmsClient) -> None:
    await client.send_code("13800138000", "123456")
    [event] = log_events(log_output, "rpc")
    logged = set(event)
    record = {field.name for field in dataclasses.fields(RpcRecord)}
    assert record <= logged  # the event carries the whole record
    documented = set()
    for cells in rows(section(METRICS, "The `rpc` log event")):
        documented.update(ticked(cells[0]) if cells[0].startswith("`") else [])
    missing = sorted(logged - documented)
    assert not missing, (
        "docs/metrics.md: add to '## The `rpc` log event' a row `| `KEY` | <its value> |` for: "
        + repr(missing)
    )
    stale = sorted(documented - logged)
    assert not stale, f"docs/metrics.md documents rpc event keys the event lacks: {stale}"


LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def logged_events() -> dict[str, str]:
    """Every structured event the server logs (a snake_case name as a logger call's first
    argument; the sandbox's stdlib log lines are sentences), with a module that logs it."""
    package = Path(yunpian_sms_server.__file__).parent
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_LEVELS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and re.fullmatch(r"[a-z][a-z0-9_]*", node.args[0].value)
            ):
                found.setdefault(node.args[0].value, path.relative_to(package.parent).as_posix())
    return found


def test_every_log_event_is_documented() -> None:
    documented = {
        ticked(cells[0])[0]
        for cells in rows(section(METRICS, "Other log events"))
        if ticked(cells[0])
    }
    events = logged_events()
    missing = sorted(set(events) - documented - {"rpc"})
    assert not missing, (
        "docs/metrics.md: add to '## Other log events' a row `| `EVENT` | <level> | <when> | "
        "<its keys> |` for: " + ", ".join(f"{name} ({events[name]})" for name in missing)
    )
    stale = sorted(documented - set(events))
    assert not stale, f"docs/metrics.md documents log events the server never logs: {stale}"


def test_the_method_label_lists_every_rpc() -> None:
    [values] = [
        cells[1] for cells in rows(section(METRICS, "Label values")) if cells[0] == "`method`"
    ]
    missing = sorted(set(RPC_NAMES) - set(ticked(values)))
    assert not missing, (
        f"docs/metrics.md: add {missing} to the values of `method` under '## Label values'"
    )


# --- docs/operations.md --------------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    """The values of docs/operations.md's 'As shipped' table, read from deploy/kubernetes/."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text(encoding="utf-8")):
            documents[(document["kind"], document["metadata"]["name"])] = document
    toml = tomllib.loads(documents[("ConfigMap", "yunpian-sms")]["data"]["config.toml"])
    pod = documents[("Deployment", "yunpian-sms")]["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "yunpian-sms"]
    return {
        "`server.drain_seconds`": toml["server"]["drain_seconds"],
        "`server.grace_period_seconds`": toml["server"]["grace_period_seconds"],
        "`yunpian.timeout_seconds`": toml["yunpian"]["timeout_seconds"],
        "readiness `periodSeconds`": container["readinessProbe"]["periodSeconds"],
        "readiness `failureThreshold`": container["readinessProbe"]["failureThreshold"],
        "`terminationGracePeriodSeconds`": pod["terminationGracePeriodSeconds"],
    }


def test_the_shipped_shutdown_numbers_are_the_manifests() -> None:
    documented = {
        cells[0]: cells[2]
        for cells in rows(section(OPERATIONS, "Deploy"))
        if len(cells) == 3 and cells[0] != "setting"
    }
    for setting, value in _shipped().items():
        assert setting in documented, (
            f"docs/operations.md: add `| {setting} | <file> | `{value}` |` to the 'As shipped' "
            "table"
        )
        assert documented[setting] == f"`{value}`", (
            f"docs/operations.md says {setting} ships as {documented[setting]}, but "
            f"deploy/kubernetes/ has {value}: update the 'As shipped' table (and the shutdown "
            "timings next to it)"
        )


# --- Every page ----------------------------------------------------------------------------

PAGES: Final = (ERRORS, CONFIGURATION, METRICS, OPERATIONS)
# Every page a reader of the repository follows: their links must lead somewhere in it.
LINKED_PAGES: Final = (
    *PAGES,
    DOCS / "architecture.md",
    REPO / "README.md",
    REPO / "client" / "README.md",
    REPO / "bench" / "README.md",
)


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_points_into_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("https://", "http://", "#")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        where = f"{page.relative_to(REPO)} links to {target}"
        assert path.is_relative_to(REPO), f"{where}, which is outside the repository"
        assert path.exists(), f"{where}, which does not exist"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_anchor_link_names_a_heading(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", page.read_text(encoding="utf-8")):
        file_part, anchor = target.split("#", 1)
        linked = (page.parent / file_part).resolve() if file_part else page
        if linked.suffix != ".md":
            continue
        assert anchor in _anchors(linked), (
            f"{page.relative_to(REPO)} links to {target}: {linked.name} has no such heading"
        )


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_the_readme_links_every_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES if f"](docs/{p.name})" not in readme]
    assert not missing, f"README.md's Documentation list lacks links to docs/{missing}"


def test_grpc_codes_in_the_error_tables_are_grpc_codes() -> None:
    names = {code.name for code in grpc.StatusCode}
    wrong = [(reason, code) for reason, code, _ in documented_reasons() if code not in names]
    assert not wrong, f"docs/errors.md names codes gRPC does not have: {wrong}"

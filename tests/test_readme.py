"""README.md and client/README.md run as written: every code block, in the order a reader
follows, against one `yunpian-sms serve --sandbox` started as `make run` starts it.

A block runs as a reader runs it; the fence's language says how:

* `console`: each `$ ` command (a line ending in a backslash or `|` goes on on the next) runs in one
  bash session per page, from the page's folder; the lines after it are what it prints, stdout
  and stderr together as a terminal shows them. `sh`, `bash`: the whole block in that session.
  Every command must succeed (bash's ERR trap, with pipefail): a refusal a page shows on
  purpose ends in `|| echo "exit status $?"`.
* `python`: a file run by the venv's python. `js`: a file run by node (NODE_PATH: the
  node_modules `make install` fills). `go`: compiled with Debian's Go and grpc-go (`make test`
  installs them) against the stubs its named protoc block makes, then run; the build starts
  with the test and takes half a minute when cold, so Go blocks run after all the others.
* `text` right after a python, js or go block: what that program prints.
* `toml`: a config excerpt, which the server's config parser must accept.

An HTML comment just before a block steers it: `<!-- not run: why -->` skips it with that reason
(a block of any other language must say so), `<!-- name: N -->` runs it only at the start of
the blocks that say `<!-- after: N -->`, as one program.

Shown output is compared line by line, trailing spaces aside: `…` stands for any text within a
line, and a line of only `…` for any lines. Times are any time. Message and verification ids
vary: an id a page shows is the id the server really gave at that place, and a later command
that uses it gets the real one, as a reader copies it. A program that waits for input after a
line ending in ": " is typed the code of the last SMS the sandbox delivered, as a reader reads it
from the sandbox; the transcript shows what was typed after the prompt.

What runs is the pages' text with no other changes than these: 127.0.0.1:50051 and
127.0.0.1:50052, where `make run` serves, become the test server's free ports; the shells and
programs have $YUNPIAN_SMS_TARGET (the CLI's server when `--target` is not given) set to it;
and the ids above. The venv's bin folder is not on their PATH: a page must say `.venv/bin/…`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from support import ServeProcess

from yunpian_sms_server.config import DELIVERY_TOKEN_ENV, parse_config

REPO: Final = Path(__file__).resolve().parent.parent
PAGES: Final = (REPO / "README.md", REPO / "client" / "README.md")
# Where `make run` serves (the Makefile's LISTEN and SANDBOX_LISTEN), as the pages write it.
GRPC_ADDRESS: Final = "127.0.0.1:50051"
SANDBOX_ADDRESS: Final = "127.0.0.1:50052"
TARGET_ENV: Final = "YUNPIAN_SMS_TARGET"
VENV_BIN: Final = Path(sys.executable).parent
NODE_MODULES: Final = REPO / "node_modules"
# Debian's Go libraries (golang-google-grpc-dev and the rest), a GOPATH tree.
DEBIAN_GOPATH: Final = Path("/usr/share/gocode")
# The module of the proto's go_package, where the Go example's stubs go.
GO_MODULE: Final = "github.com/example/yunpian-sms"
GO_TOOLS: Final = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")

# A command or program that has not ended by then has hung.
STEP_TIMEOUT_S: Final = 60.0
# A cold build of grpc-go takes about half a minute on this project's 2-core machines.
GO_BUILD_TIMEOUT_S: Final = 300.0
# How long a program stays silent after a prompt before the test types an answer.
PROMPT_PAUSE_S: Final = 0.3

# The fence languages the test runs, and how.
RUNNERS: Final = {
    "console": "shell",
    "sh": "shell",
    "bash": "shell",
    "python": "python",
    "js": "node",
    "javascript": "node",
    "go": "go",
}
PROGRAMS: Final = frozenset({"python", "node", "go"})
OUTPUT: Final = "text"
CONFIG: Final = "toml"

_FENCE = re.compile(r"```(\S*)")
_MARKER = re.compile(r"<!-- (not run|name|after): (.+?) -->")
# What varies in shown output: `…`, times, and ids (message ids are 16+ digits: beyond 2^53).
_VARYING = re.compile(
    r"(?P<any>…)"
    r"|(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)"
    r"|(?P<clock>\b\d\d:\d\d:\d\d\b)"
    r"|(?P<id>\b\d{16,20}\b|\bvf_[0-9A-Za-z_-]+)"
)
TIMESTAMP: Final = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"


# --- Reading the pages ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page, with the markers just above it."""

    page: Path
    line: int  # of the opening fence, from 1
    language: str
    text: str
    not_run: str | None = None  # why it is not run
    name: str | None = None
    after: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runner(self) -> str | None:
        return RUNNERS.get(self.language)


def page_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = _FENCE.fullmatch(lines[index].rstrip())
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"{page.relative_to(REPO)}:{index + 1}: a block never closed"
        markers: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (marker := _MARKER.fullmatch(lines[above].strip())):
            markers[marker.group(1)] = marker.group(2).strip()
            above -= 1
        after = tuple(name.strip() for name in markers.get("after", "").split(",") if name)
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=opening.group(1),
                text="\n".join(lines[index + 1 : end]) + "\n",
                not_run=markers.get("not run"),
                name=markers.get("name"),
                after=after,
            )
        )
        index = end + 1
    return found


def outputs(blocks: list[Block]) -> dict[Block, Block]:
    """Each program block whose output a page shows -> the `text` block showing it."""
    return {
        previous: block
        for previous, block in itertools.pairwise(blocks)
        if block.language == OUTPUT
    }


def console_steps(text: str) -> list[tuple[str, str]]:
    """(command, what the page shows it prints) of each `$ ` line of a console block."""
    lines = text.splitlines()
    steps = []
    index = 0
    while index < len(lines):
        assert lines[index].startswith("$ "), f"a console block line is no command: {lines[index]}"
        command = [lines[index].removeprefix("$ ")]
        while command[-1].endswith(("\\", "|")) and index + 1 < len(lines):
            index += 1
            command.append(lines[index])
        index += 1
        shown = []
        while index < len(lines) and not lines[index].startswith("$ "):
            shown.append(lines[index])
            index += 1
        steps.append(("\n".join(command), "\n".join(shown)))
    return steps


BLOCKS: Final = {page: page_blocks(page) for page in PAGES}


# --- Comparing output ----------------------------------------------------------------------


def output_pattern(shown: str, ids: Mapping[str, str]) -> tuple[re.Pattern[str], dict[str, str]]:
    """The pattern of an output as a page shows it, and its groups: shown id -> group name.

    An id the page showed earlier must be the real id it stood for then; a new one is captured.
    """
    groups: dict[str, str] = {}
    pieces = []
    for line in shown.splitlines():
        line = line.rstrip()
        if line.strip() == "…":
            pieces.append(r"(?:[^\n]*\n)*?")
            continue
        position = 0
        for varying in _VARYING.finditer(line):
            pieces.append(re.escape(line[position : varying.start()]))
            position = varying.end()
            value = varying.group()
            if varying.group("any"):
                pieces.append(r"[^\n]*?")
            elif varying.group("timestamp"):
                pieces.append(TIMESTAMP)
            elif varying.group("clock"):
                pieces.append(r"\d\d:\d\d:\d\d")
            elif value in ids:
                pieces.append(re.escape(ids[value]))
            elif value in groups:
                pieces.append(f"(?P={groups[value]})")
            else:
                groups[value] = f"id{len(groups)}"
                kind = r"vf_[0-9A-Za-z_-]+" if value.startswith("vf_") else r"\d{16,20}"
                pieces.append(f"(?P<{groups[value]}>{kind})")
        pieces.append(re.escape(line[position:]) + r"\n")
    return re.compile("".join(pieces)), groups


def check_output(where: str, shown: str, printed: str, ids: dict[str, str]) -> None:
    """Fails unless `printed` has the shape the page shows; learns the ids it showed."""
    normal = "".join(line.rstrip() + "\n" for line in printed.splitlines())
    pattern, groups = output_pattern(shown, ids)
    match = pattern.fullmatch(normal)
    assert match is not None, (
        f"{where}: the output is not what the page shows.\n--- the page shows:\n{shown}\n"
        f"--- it printed:\n{printed}"
    )
    for value, group in groups.items():
        real = match.group(group)
        shown_before = [before for before, known in ids.items() if known == real]
        assert not shown_before, (
            f"{where}: the page shows {value} for the id it showed as {shown_before[0]} before"
        )
        ids[value] = real


# --- Running what a reader runs ------------------------------------------------------------


def reader_environment(target: str) -> dict[str, str]:
    """A reader's environment: no YUNPIAN_* settings, the venv not on PATH, the CLI's server."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("YUNPIAN_") and name not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    path = environment.get("PATH", os.defpath).split(os.pathsep)
    environment["PATH"] = os.pathsep.join(
        entry for entry in path if entry and Path(entry).resolve() != VENV_BIN.resolve()
    )
    environment[TARGET_ENV] = target
    environment["NODE_PATH"] = str(NODE_MODULES)
    environment["PYTHONUNBUFFERED"] = "1"  # output in the order a terminal shows it
    return environment


class Shell:
    """A bash session, as a reader's terminal: commands share its variables and functions."""

    def __init__(self, cwd: Path, environment: Mapping[str, str], directory: Path) -> None:
        directory.mkdir(parents=True)
        self._directory = directory
        self._steps = 0
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=dict(environment),
            text=True,
            start_new_session=True,
        )
        self._send(
            "set -E -o pipefail\n"
            'trap \'echo "exit status $? of: $BASH_COMMAND" >> "$__readme_errors"\' ERR\n'
        )

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line)
        self._process.stdin.flush()

    def run(self, where: str, script: str) -> str:
        """Runs a script in the session; its output. Fails if a command of it failed."""
        self._steps += 1
        step = self._directory / f"step-{self._steps}"
        script_path, output, errors = (step.with_suffix(s) for s in (".sh", ".out", ".errors"))
        done, done_soon = step.with_suffix(".done"), step.with_suffix(".tmp")
        script_path.write_text(script + "\n", encoding="utf-8")
        errors.write_text("")
        self._send(
            f"__readme_errors={shlex.quote(str(errors))}; "
            f"source {shlex.quote(str(script_path))} >{shlex.quote(str(output))} 2>&1 "
            f"</dev/null; echo >{shlex.quote(str(done_soon))}; "
            f"mv {shlex.quote(str(done_soon))} {shlex.quote(str(done))}\n"
        )
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not done.exists():
            printed = output.read_text(errors="replace") if output.exists() else ""
            assert self._process.poll() is None, f"{where}: the shell exited:\n{printed}"
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"{where}: still running after {STEP_TIMEOUT_S} s:\n{script}")
            time.sleep(0.02)
        printed = output.read_text(encoding="utf-8", errors="replace")
        failed = errors.read_text(encoding="utf-8").strip()
        assert not failed, f"{where}: a command failed:\n{failed}\n--- it printed:\n{printed}"
        return printed

    def close(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(10)
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()


def run_program(
    where: str,
    command: list[str],
    cwd: Path,
    environment: Mapping[str, str],
    answer: Callable[[], str],
) -> str:
    """Runs a program to its end, typing `answer()` at each prompt; its transcript. Fails
    unless it exits 0."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(environment),
        start_new_session=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    transcript = bytearray()
    answered_at = -1
    deadline = time.monotonic() + STEP_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                assert remaining > 0, (
                    f"{where}: still running after {STEP_TIMEOUT_S} s:\n{transcript.decode()}"
                )
                if selector.select(min(PROMPT_PAUSE_S, remaining)):
                    chunk = os.read(process.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    transcript += chunk
                elif transcript.endswith(b": ") and answered_at != len(transcript):
                    typed = answer().encode() + b"\n"
                    process.stdin.write(typed)
                    process.stdin.flush()
                    transcript += typed  # a terminal shows what was typed
                    answered_at = len(transcript)
            status = process.wait(STEP_TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            process.stdin.close()
            process.stdout.close()
    printed = transcript.decode(errors="replace")
    assert status == 0, f"{where}: exit status {status}:\n{printed}"
    return printed


def make_run_command(**variables: str) -> list[str]:
    """The command `make run` runs, as `make -n` prints it (with Makefile variables set)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    settings = [f"{name}={value}" for name, value in variables.items()]
    made = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", *settings],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=True,
    )
    command = shlex.split(made.stdout.splitlines()[-1])
    assert Path(command[0]).name == "yunpian-sms", made.stdout
    assert command[1] == "serve", made.stdout
    return command


class Reader:
    """Follows the pages against one server: a shell per page, and the ids its outputs showed."""

    def __init__(self, target: str, sandbox_url: str, directory: Path) -> None:
        self.target = target
        self.sandbox_url = sandbox_url
        self.sandbox_address = sandbox_url.removeprefix("http://")
        self.directory = directory
        self.environment = reader_environment(target)
        self._shells: dict[Path, Shell] = {}
        self._ids: dict[Path, dict[str, str]] = {page: {} for page in PAGES}
        self._builder = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        # Go takes long to build: the builds start now, in the order of the pages.
        self._builds = {
            block: self._builder.submit(self._build_go, block)
            for page in PAGES
            for block in BLOCKS[page]
            if block.runner == "go" and not block.not_run
        }

    def close(self) -> None:
        for shell in self._shells.values():
            shell.close()
        for build in self._builds.values():
            build.cancel()
        self._builder.shutdown(wait=True)

    def as_run(self, text: str, page: Path) -> str:
        """A page's text as the test runs it: the server's real addresses and ids."""
        text = text.replace(GRPC_ADDRESS, self.target).replace(
            SANDBOX_ADDRESS, self.sandbox_address
        )
        for shown, real in self._ids[page].items():
            text = re.sub(rf"\b{re.escape(shown)}\b", real, text)
        return text

    def last_code(self) -> str:
        """The code of the last SMS the sandbox delivered, which a reader types."""
        url = f"{self.sandbox_url}/sandbox/messages"
        with urllib.request.urlopen(url, timeout=STEP_TIMEOUT_S) as answer:  # noqa: S310
            messages = json.load(answer)["messages"]
        assert messages, "a program asks for a code, but the sandbox has sent no SMS"
        return str(messages[-1]["code"])

    def check(self, where: str, page: Path, shown: str, printed: str) -> None:
        """Fails unless the output has the shape the page shows (at its real addresses)."""
        shown = shown.replace(GRPC_ADDRESS, self.target).replace(
            SANDBOX_ADDRESS, self.sandbox_address
        )
        check_output(where, shown, printed, self._ids[page])

    def shell(self, page: Path) -> Shell:
        if page not in self._shells:
            directory = self.directory / f"shell-{len(self._shells)}"
            self._shells[page] = Shell(page.parent, self.environment, directory)
        return self._shells[page]

    def run(self, block: Block) -> None:
        if block.runner == "shell":
            self._run_shell(block)
        else:
            printed = self._run_program(block)
            shown = outputs(BLOCKS[block.page]).get(block)
            if shown is not None:
                self.check(block.where, block.page, shown.text, printed)

    def _run_shell(self, block: Block) -> None:
        shell = self.shell(block.page)
        if block.language != "console":
            shell.run(block.where, self.as_run(block.text, block.page))
            return
        for command, shown in console_steps(block.text):
            where = f"{block.where} `$ {command.splitlines()[0]}`"
            printed = shell.run(where, self.as_run(command, block.page))
            self.check(where, block.page, shown, printed)

    def _program_text(self, block: Block) -> str:
        """The block after the blocks it names, as one program."""
        named = {b.name: b for b in BLOCKS[block.page] if b.name}
        parts = [named[name].text for name in block.after] + [block.text]
        return self.as_run("\n".join(parts), block.page)

    def _run_program(self, block: Block) -> str:
        source = self.directory / re.sub(r"\W", "-", block.where)
        if block.runner == "python":
            path = source.with_suffix(".py")
            path.write_text(self._program_text(block), encoding="utf-8")
            command = [sys.executable, str(path)]
        elif block.runner == "node":
            node = shutil.which("node")
            assert node is not None, "node is part of the toolchain the README requires"
            path = source.with_suffix(".js")
            path.write_text(self._program_text(block), encoding="utf-8")
            command = [node, str(path)]
        else:
            command = [str(self._builds[block].result(GO_BUILD_TIMEOUT_S))]
        return run_program(
            block.where, command, block.page.parent, self.environment, self.last_code
        )

    def _build_go(self, block: Block) -> Path:
        """Builds a Go block in GOPATH mode against Debian's Go libraries, after running the
        shell blocks it names (protoc) at the root of the module its stubs belong to."""
        missing = [tool for tool in GO_TOOLS if shutil.which(tool) is None]
        if not DEBIAN_GOPATH.is_dir():
            missing.append(str(DEBIAN_GOPATH))
        assert not missing, (
            f"{block.where}: {missing} missing: `make test` installs Debian's Go toolchain and "
            "grpc-go (the Makefile's go-toolchain target)"
        )
        gopath = self.directory / f"go-{block.line}"
        module = gopath / "src" / GO_MODULE
        module.mkdir(parents=True)
        (module / "protos").symlink_to(REPO / "protos")
        named = {b.name: b for b in BLOCKS[block.page] if b.name}
        for name in block.after:
            made = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", self.as_run(named[name].text, block.page)],
                cwd=module,
                env=self.environment,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            assert made.returncode == 0, f"{named[name].where}: {made.stderr}"
        program = module / "cmd" / "readme"
        program.mkdir(parents=True)
        (program / "main.go").write_text(self.as_run(block.text, block.page), encoding="utf-8")
        binary = gopath / "readme-example"
        environment = {
            **self.environment,
            "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "CGO_ENABLED": "0",
        }
        built = subprocess.run(
            ["go", "build", "-o", str(binary), "."],
            cwd=program,
            env=environment,
            capture_output=True,
            text=True,
            timeout=GO_BUILD_TIMEOUT_S,
            check=False,
        )
        assert built.returncode == 0, f"{block.where}: go build failed:\n{built.stderr}"
        return binary


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    """`make run`'s server on free loopback ports, and a reader following the pages."""
    directory = tmp_path_factory.mktemp("readme")
    command = make_run_command(LISTEN="127.0.0.1:0", SANDBOX_LISTEN="127.0.0.1:0")
    process = ServeProcess.start(*command[2:], directory=directory / "serve")
    try:
        asyncio.run(process.next_event("serving"))
        [serving] = process.events_named("serving")
        following = Reader(process.target, serving["sandbox"], directory)
        try:
            yield following
        finally:
            following.close()
    finally:
        asyncio.run(process.kill())


# --- The tests -----------------------------------------------------------------------------


def _run_order() -> Iterator[object]:
    """Every block that runs on its own, pages in order; Go blocks last, with more time, so that
    their build (half a minute, cold) goes on while the others run. A block not run is no test
    (test_every_block_runs_or_says_why_not holds it to saying why)."""
    ordered = [
        block
        for page in PAGES
        for block in BLOCKS[page]
        if not block.not_run and block.runner and block.name is None
    ]
    for block in sorted(ordered, key=lambda block: block.runner == "go"):
        marks = [pytest.mark.timeout(GO_BUILD_TIMEOUT_S)] if block.runner == "go" else []
        yield pytest.param(block, marks=marks, id=f"{block.where}-{block.language}")


@pytest.mark.parametrize("block", list(_run_order()))
def test_block_runs_as_written(block: Block, reader: Reader) -> None:
    reader.run(block)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_block_runs_or_says_why_not(page: Path) -> None:
    blocks = BLOCKS[page]
    names = {block.name for block in blocks if block.name}
    used = {name for block in blocks for name in block.after}
    problems = []
    for index, block in enumerate(blocks):
        where = f"{block.where} (```{block.language})"
        if block.not_run:
            if block.name or block.after:
                problems.append(f"{where}: a block not run can neither be named nor run after")
            continue
        if block.language == OUTPUT:
            previous = blocks[index - 1] if index else None
            if previous is None or previous.runner not in PROGRAMS or previous.not_run:
                problems.append(
                    f"{where}: a text block shows the output of the block just before it, "
                    "which must be a python, js or go block that runs"
                )
        elif block.language != CONFIG and block.runner is None:
            problems.append(
                f"{where}: the test runs {sorted(RUNNERS)} blocks (and checks toml ones); "
                "make it one of them or say why it cannot run, just above it: "
                "<!-- not run: why -->"
            )
        if block.language == "console" and not block.text.startswith("$ "):
            problems.append(f"{where}: a console block starts with a `$ ` command")
        problems += [
            f"{where}: after {name}, but no block above it is <!-- name: {name} -->"
            for name in block.after
            if name not in {b.name for b in blocks[:index]}
        ]
    problems += [
        f"{page.name}: <!-- name: {name} --> is run after by no block" for name in names - used
    ]
    assert not problems, "\n".join(problems)


def _config_blocks() -> Iterator[object]:
    for page in PAGES:
        for block in BLOCKS[page]:
            if block.language == CONFIG and not block.not_run:
                yield pytest.param(block, id=block.where)


@pytest.mark.parametrize("block", list(_config_blocks()))
def test_config_excerpts_are_accepted(block: Block) -> None:
    # The excerpts take their secrets from the environment, as the pages tell.
    environment = {DELIVERY_TOKEN_ENV: secrets.token_hex(32)}
    parse_config(tomllib.loads(block.text), env=environment)


def test_make_run_serves_where_the_pages_say() -> None:
    command = make_run_command()
    assert "--sandbox" in command
    assert command[command.index("--listen") + 1] == GRPC_ADDRESS
    assert command[command.index("--sandbox-listen") + 1] == SANDBOX_ADDRESS


def test_shown_output_patterns_hold_ids_across_outputs() -> None:
    ids: dict[str, str] = {}
    check_output(
        "sent",
        "sent: message_id=9007199254741992 at 08:00:00 …",
        "sent: message_id=9007199254741999 at 10:11:12 later",
        ids,
    )
    assert ids == {"9007199254741992": "9007199254741999"}
    with pytest.raises(AssertionError, match="not what the page shows"):
        check_output("status", "message_id=9007199254741992", "message_id=9007199254741993", ids)
    with pytest.raises(AssertionError, match="showed as 9007199254741992 before"):
        check_output("again", "message_id=9007199254741995", "message_id=9007199254741999", ids)
    check_output("lines", "{\n…\n}", "{\n  a\n  b\n}\n", ids)

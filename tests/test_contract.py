"""The proto contract: buf lint clean, and no breaking change against the last release."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUF = REPO / "node_modules" / ".bin" / "buf"
PROTO = Path("yunpian") / "sms" / "v1" / "sms_service.proto"
BUF_TIMEOUT_S = 120


def last_release() -> Path:
    releases = sorted((REPO / "releases" / "proto").glob("v*.binpb"))
    assert releases, "no released contract in releases/proto"
    return releases[-1]


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf comes from npm: run `make install`"
    return subprocess.run(
        [str(BUF), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUF_TIMEOUT_S,
        check=False,
    )


def test_the_proto_passes_buf_lint_with_every_element_commented() -> None:
    result = buf("lint", cwd=REPO / "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_proto_keeps_the_last_released_contract() -> None:
    result = buf("breaking", "--against", str(last_release()), cwd=REPO / "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_renumbered_field(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos)
    source = (protos / PROTO).read_text()
    renumbered = re.sub(r"string code = 2;", "string code = 9;", source, count=1)
    assert renumbered != source
    (protos / PROTO).write_text(renumbered)
    result = buf("breaking", "--against", str(last_release()), cwd=protos)
    assert result.returncode != 0
    assert "code" in result.stdout + result.stderr

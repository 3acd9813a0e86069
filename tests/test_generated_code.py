"""The committed generated code is exactly what `make generate` produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "client" / "src"


def generated_files(root: Path) -> dict[str, bytes]:
    found = [
        path
        for path in root.glob("yunpian/**/*")
        if path.suffix in (".py", ".pyi", ".typed") and "__pycache__" not in path.parts
    ]
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(found)}


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "generate_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = generated_files(tmp_path)
    committed = generated_files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "generated files differ: run `make generate`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make generate` and commit"


def test_generated_modules_import_from_the_proto_package_path() -> None:
    from yunpian.sms.v1 import sms_service_pb2, sms_service_pb2_grpc

    assert sms_service_pb2.DESCRIPTOR.package == "yunpian.sms.v1"
    assert hasattr(sms_service_pb2_grpc, "SmsServiceStub")

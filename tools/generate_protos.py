"""Generates the Python code of protos/ into the SDK (client/src), or into another folder.

Run `make generate` after changing a .proto; tests/test_generated_code.py runs the same
generation into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "client" / "src"
# Marks the generated package as typed (PEP 561) so callers' mypy reads the .pyi stubs.
TYPED_MARKER = "yunpian/sms/v1/py.typed"


def proto_files() -> list[Path]:
    """Returns every .proto below protos/, relative to it, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py(i) and *_pb2_grpc.py(i) for every proto into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    # mypy-protobuf's plugin types the gRPC stub and servicer (sync and grpc.aio) for mypy.
    mypy_grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    files = [str(p) for p in proto_files()]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
            f"--mypy_grpc_out={out_dir}",
            *files,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    (out_dir / TYPED_MARKER).write_text("")
    return generated_files(out_dir)


def generated_files(root: Path) -> list[Path]:
    """Lists the generated files below root, relative to it."""
    found = [*root.glob("yunpian/**/*_pb2*.py"), *root.glob("yunpian/**/*_pb2*.pyi")]
    return sorted(p.relative_to(root) for p in [*found, root / TYPED_MARKER] if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    for path in generate(args.out):
        print(args.out / path)


if __name__ == "__main__":
    sys.exit(main())

"""Generate base_package/ from proto/data.proto: ``python proto/generate.py``.

protoc maps the virtual import path ``base_package/`` onto this folder, so the generated
modules import each other as ``base_package.data_pb2`` and work as a package without edits.
A test regenerates into a temporary folder and fails when the committed stubs differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
PACKAGE = "base_package"
INIT = '"""Generated from proto/data.proto by proto/generate.py. Do not edit by hand."""\n'


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write ``<out_dir>/base_package/{__init__,data_pb2,data_pb2_grpc}.py(i)``; return the files."""
    package_dir = out_dir / PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["grpc_tools.protoc", f"-I{PACKAGE}={PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", f"{PACKAGE}/data.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    (package_dir / "__init__.py").write_text(INIT, encoding="utf-8")
    return sorted(p for p in package_dir.iterdir() if p.is_file())


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(f"wrote {path}")

"""base_package/ is generated from proto/: regenerate it and compare, byte for byte."""

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    fresh = generate.generate(tmp_path)
    committed = ROOT / "base_package"
    names = sorted(p.name for p in fresh)
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file()), "files differ"
    _, mismatch, errors = filecmp.cmpfiles(committed, tmp_path / "base_package", names, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch or errors}: run `python proto/generate.py`"

"""The package layers: imports go one way (chain <- sql <- net <- roles; ``fl`` knows no
networking; the console talks gRPC only), and the light entry points stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running ``statement`` in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_chain_package_is_a_leaf():
    loaded = _loaded_after("import node.chain.rules, node.chain.identity, node.chain.ledger, "
                           "node.chain.audit, node.chain.store")
    assert not loaded & {"grpc", "torch", "sqlalchemy", "google"}, loaded & {"grpc", "torch", "sqlalchemy", "google"}


@pytest.mark.parametrize("module", ["node.health", "console.app"])
def test_light_entry_points_load_neither_torch_nor_sqlalchemy(module):
    loaded = _loaded_after(f"import {module}")
    assert not loaded & {"torch", "sqlalchemy"}, loaded & {"torch", "sqlalchemy"}


# package -> packages it must never import (anywhere in its modules, lazily or not)
FORBIDDEN = {
    "node/chain": ("grpc", "torch", "sqlalchemy", "sql", "node.net", "node.roles", "node.dev", "fl", "base_package"),
    "sql": ("grpc", "torch", "node.net", "node.roles", "node.dev", "fl"),
    "node/net": ("torch", "sqlalchemy", "sql", "node.roles", "node.dev"),
    "fl": ("grpc", "node", "sql", "sqlalchemy", "console", "base_package"),
    "console": ("torch", "sqlalchemy", "sql", "fl.serialize", "fl.simulation", "fl.strategy", "fl.federation",
                "fl.report", "node.roles", "node.dev", "node.chain.ledger"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_mapped_exception_class_exists():
    """Status codes are mapped by class name (no imports); a renamed class must fail here, not
    turn its refusals into INTERNAL errors."""
    import importlib

    from node.net.errors import _CODES

    for name in _CODES:
        module, _, cls = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name


def test_a_cancelled_request_stream_is_a_quiet_cancellation():
    """gRPC's request iterator raises a bare RpcError (no code()) when the caller goes away."""
    import grpc

    from node.net.errors import status_for

    assert status_for(grpc.RpcError())[0] == grpc.StatusCode.CANCELLED

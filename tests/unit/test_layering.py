"""The domain stays pure: phoenixcp.core imports no grpc, nats, etcd, hvac or generated code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CORE = Path(__file__).resolve().parents[2] / "libs" / "phoenixcp" / "core"
FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "nats", "etcd3aio", "hvac",
             "phoenixcp.api", "phoenixcp.platform", "aiohttp", "prometheus_client")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_nothing_from_adapters() -> None:
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = [m for m in imported_modules(path)
               if any(m == f or m.startswith(f + ".") for f in FORBIDDEN) or m.endswith("_pb2")]
        if bad:
            offenders[str(path.relative_to(CORE))] = bad
    assert offenders == {}


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import grpc\nfrom nats.aio import client\n")
    assert imported_modules(sample) == {"grpc", "nats.aio"}

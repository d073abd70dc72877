#!/usr/bin/env python3
"""Regenerate the Python stubs of Phoenix's gRPC contract, or check they are fresh.

    python scripts/gen_protos.py           # regenerate libs/phoenixcp/api/{phoenix/v1,prometheus}/
    python scripts/gen_protos.py --check   # exit 1 if the committed stubs are stale

Two sets of protos are compiled: Phoenix's contract, protos/phoenix/v1/*.proto, into
`phoenixcp.api.phoenix.v1`, and the hand-written copy of Prometheus' remote-write
schema, third_party/protos/prometheus/*.proto, into `phoenixcp.api.prometheus` (kept
out of protos/ so that buf lint judges only our own contract). The stubs are
generated with grpcio-tools (`python -m grpc_tools.protoc`: `*_pb2.py`,
`*_pb2_grpc.py`) and mypy-protobuf (`*_pb2.pyi`, `*_pb2_grpc.pyi`). protoc names
modules after the proto path (`phoenix.v1.x_pb2`); they are rewritten to import as
`phoenixcp.api.phoenix.v1.x_pb2`. `*_pb2_grpc` modules are kept only for files
that define a service. Generation always happens in a temporary directory, so
the output depends only on the protos and the generator versions; `--check`
compares that output byte for byte with what is committed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_ROOT = ROOT / "libs" / "phoenixcp" / "api"
PYTHON_PREFIX = "phoenixcp.api"


@dataclass(frozen=True)
class ProtoSet:
    """One directory of .proto files of one proto package, compiled into API_ROOT/package_dir."""

    proto_root: Path
    package_dir: Path

    @property
    def proto_package(self) -> str:
        return ".".join(self.package_dir.parts)


PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE_DIR = Path("phoenix") / "v1"
PROTO_SETS = (
    ProtoSet(PROTO_ROOT, PROTO_PACKAGE_DIR),
    ProtoSet(ROOT / "third_party" / "protos", Path("prometheus")),
)

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")

# Hand-written package markers that make the stubs importable. They are created
# when missing and never overwritten.
PACKAGE_INITS: dict[Path, str] = {
    Path("__init__.py"): (
        '"""Generated gRPC and protobuf stubs of the Phoenix contract (protos/phoenix/v1).\n'
        "\n"
        "Everything under `phoenixcp.api.phoenix` is generated: never edit it by hand.\n"
        "Change the .proto files and regenerate with `make protos`\n"
        "(`python scripts/gen_protos.py`); CI fails when the stubs are stale\n"
        "(`python scripts/gen_protos.py --check`).\n"
        '"""\n'
    ),
    Path("phoenix") / "__init__.py": '"""Generated stubs; see `phoenixcp.api`."""\n',
    PROTO_PACKAGE_DIR / "__init__.py": (
        '"""Generated stubs of package `phoenix.v1`; regenerate with `make protos`."""\n'
    ),
    Path("prometheus") / "__init__.py": (
        '"""Generated stubs of Prometheus\' remote-write schema (third_party/protos/prometheus).\n'
        "\n"
        "Regenerate with `make protos`; never edit by hand.\n"
        '"""\n'
    ),
}

# Lines that only stamp the generator's version; used to explain a --check
# failure, never to hide one.
_VERSION_STAMP = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|\s+\d+,)$", re.MULTILINE
)
_SERVICE_STUB = re.compile(r"^class \w+Stub\b", re.MULTILINE)


class GenerationError(Exception):
    """protoc or a plugin failed, or its output is not what this script expects."""


def proto_files(proto_set: ProtoSet) -> list[Path]:
    """The set's .proto files, relative to its proto root, sorted."""
    files = sorted((proto_set.proto_root / proto_set.package_dir).glob("*.proto"))
    if not files:
        raise GenerationError(
            f"no .proto files in {proto_set.proto_root / proto_set.package_dir}"
        )
    return [f.relative_to(proto_set.proto_root) for f in files]


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise GenerationError(
            f"{name} not found; install the dev tools: pip install -e '.[dev]' "
            "(mypy-protobuf provides it)"
        )
    return found


def run_protoc(proto_set: ProtoSet, out_dir: Path) -> None:
    """Run protoc on one set with the Python, gRPC and mypy generators into out_dir."""
    try:
        wkt_include = resources.files("grpc_tools") / "_proto"
    except ModuleNotFoundError as exc:
        raise GenerationError(
            "grpcio-tools is not installed; install the dev tools: pip install -e '.[dev]'"
        ) from exc
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_set.proto_root}",
        f"--proto_path={wkt_include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p) for p in proto_files(proto_set)],
    ]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(f"protoc failed (exit {result.returncode}):\n{result.stderr}")


def rewrite_imports(proto_set: ProtoSet, text: str) -> str:
    """Make generated modules import each other as `phoenixcp.api.<package>.x_pb2`."""
    package = re.escape(proto_set.proto_package)
    text = re.sub(
        rf"^from {package} import ",
        f"from {PYTHON_PREFIX}.{proto_set.proto_package} import ",
        text,
        flags=re.MULTILINE,
    )
    return re.sub(
        rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, '){package}\.",
        rf"\g<1>{PYTHON_PREFIX}.{proto_set.proto_package}.",
        text,
    )


def postprocess(proto_set: ProtoSet, gen_dir: Path) -> None:
    """Rewrite imports and drop gRPC modules of files that define no service."""
    top = re.escape(proto_set.package_dir.parts[0])
    leftover_import = re.compile(rf"^\s*(from|import) {top}\b", re.MULTILINE)
    for path in sorted(gen_dir.iterdir()):
        if path.name.endswith("_pb2_grpc.py") and not _SERVICE_STUB.search(path.read_text()):
            path.unlink()
            path.with_suffix(".pyi").unlink(missing_ok=True)
    for path in sorted(gen_dir.iterdir()):
        text = rewrite_imports(proto_set, path.read_text(encoding="utf-8"))
        leftover = leftover_import.search(text)
        if leftover:
            raise GenerationError(
                f"{path.name}: unexpected import {leftover.group(0).strip()!r} left after "
                "rewriting; the generator's output format changed, update "
                "scripts/gen_protos.py"
            )
        path.write_bytes(text.encode("utf-8"))


def generate(out_dir: Path) -> dict[Path, bytes]:
    """Generate every set's stubs under out_dir; return {path relative to API_ROOT: content}."""
    fresh: dict[Path, bytes] = {}
    for proto_set in PROTO_SETS:
        set_out = out_dir / proto_set.proto_package
        set_out.mkdir()
        run_protoc(proto_set, set_out)
        gen_dir = set_out / proto_set.package_dir
        postprocess(proto_set, gen_dir)
        fresh.update(
            {
                proto_set.package_dir / p.name: p.read_bytes()
                for p in sorted(gen_dir.iterdir())
                if p.is_file()
            }
        )
    return fresh


def committed_stubs() -> dict[Path, bytes]:
    """The generated files currently committed, relative to API_ROOT."""
    found: dict[Path, bytes] = {}
    for proto_set in PROTO_SETS:
        target = API_ROOT / proto_set.package_dir
        if not target.is_dir():
            continue
        for p in sorted(target.iterdir()):
            if p.is_file() and p.name.endswith(GENERATED_SUFFIXES):
                found[proto_set.package_dir / p.name] = p.read_bytes()
    return found


def _only_version_stamps_differ(old: bytes, new: bytes) -> bool:
    def strip(b: bytes) -> str:
        return _VERSION_STAMP.sub("", b.decode("utf-8", "replace"))

    return strip(old) == strip(new)


def check(fresh: dict[Path, bytes]) -> int:
    """Compare fresh output with the committed stubs; print what is stale."""
    current = committed_stubs()
    rel = API_ROOT.relative_to(ROOT)
    problems: list[str] = []
    stamp_only = True
    for name in sorted(fresh.keys() | current.keys()):
        if name not in current:
            problems.append(f"  missing:  {rel / name}")
            stamp_only = False
        elif name not in fresh:
            problems.append(f"  obsolete: {rel / name} (no longer generated)")
            stamp_only = False
        elif current[name] != fresh[name]:
            problems.append(f"  stale:    {rel / name}")
            stamp_only = stamp_only and _only_version_stamps_differ(current[name], fresh[name])
    for init in sorted(PACKAGE_INITS):
        if not (API_ROOT / init).exists():
            problems.append(f"  missing:  {(API_ROOT / init).relative_to(ROOT)}")
            stamp_only = False
    if not problems:
        print(f"protos: stubs in {rel} are up to date ({len(fresh)} files)")
        return 0
    print("protos: generated stubs differ from their .proto files:", file=sys.stderr)
    print("\n".join(problems), file=sys.stderr)
    if stamp_only:
        print(
            "  (only the generator version stamps differ: install the pinned dev tools,\n"
            "   pip install -e '.[dev]', before regenerating)",
            file=sys.stderr,
        )
    print("Fix: run `make protos` (python scripts/gen_protos.py) and commit.", file=sys.stderr)
    return 1


def write(fresh: dict[Path, bytes]) -> None:
    """Replace the committed stubs with fresh ones; add missing package markers."""
    for name in sorted(committed_stubs().keys() - fresh.keys()):
        (API_ROOT / name).unlink()
        print(f"removed {(API_ROOT / name).relative_to(ROOT)}")
    changed = 0
    for name, content in sorted(fresh.items()):
        path = API_ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed += 1
    for init, text in sorted(PACKAGE_INITS.items()):
        path = API_ROOT / init
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    print(f"protos: {changed} of {len(fresh)} files written to {API_ROOT.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and exit 1 if the committed stubs differ",
    )
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="phoenix-protos-") as tmp:
            fresh = generate(Path(tmp))
    except GenerationError as exc:
        print(f"protos: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return check(fresh)
    write(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

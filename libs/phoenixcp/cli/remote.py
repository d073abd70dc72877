"""What phoenixctl's API commands share: finding a metrics-pipeline replica, calling it over
mTLS, reading policy documents, and turning a refused call into a message and an exit code.

Exit codes: 0 done; 2 invalid input (a document that does not parse, or INVALID_ARGUMENT
from the server, whose every violation is printed); 1 anything else (not found, etcd not
connected, no stack running ...).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from phoenixcp.api.phoenix.v1 import common_pb2, pipeline_pb2_grpc, state_pb2
from phoenixcp.cli.stack import operator_bundle, read_endpoints
from phoenixcp.core.durations import parse_duration
from phoenixcp.platform.rpc import secure_channel
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY
from phoenixcp.platform.tls import CertBundle

if TYPE_CHECKING:
    from phoenixcp.api.phoenix.v1.pipeline_pb2_grpc import PipelineServiceAsyncStub as Stub

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "CliError",
    "Target",
    "as_json",
    "call_pipeline",
    "load_policies",
    "print_json",
    "report_rpc_error",
    "run_remote",
]

EXIT_FAILED = 1
EXIT_INVALID = 2
DEFAULT_TENANT = "default"

T = TypeVar("T")


class CliError(Exception):
    """A problem phoenixctl found before calling anything; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Target:
    """A metrics-pipeline replica's gRPC address and the operator's certificate."""

    address: str
    bundle: CertBundle

    @classmethod
    def find(cls, state_dir: Path, address: str | None) -> Target:
        """The replica ``address`` (default: the first metrics-pipeline replica listed) of the
        stack whose endpoints.json is in ``state_dir``, with its operator certificate."""
        try:
            endpoints = read_endpoints(state_dir)
        except FileNotFoundError:
            raise CliError(f"no Phoenix stack runs from {state_dir} ({state_dir}/endpoints.json "
                           "is missing); start one with `phoenixctl up`, or pass --state-dir") \
                from None
        replicas = endpoints.get("services", {}).get("metrics-pipeline") or []
        chosen = address or next((r.get("grpc") for r in replicas if r.get("grpc")), None)
        if not chosen:
            raise CliError(f"the stack in {state_dir} lists no metrics-pipeline replica; "
                           "pass --address HOST:PORT")
        return cls(chosen, operator_bundle(endpoints))


async def call_pipeline(target: Target, work: Callable[[Stub], Awaitable[T]]) -> T:
    """Run ``work`` with a PipelineService stub on an mTLS channel to ``target``."""
    async with secure_channel(target.address, target.bundle) as channel:
        return await work(pipeline_pb2_grpc.PipelineServiceStub(channel))


def run_remote(command: str, state_dir: Path, address: str | None,
               work: Callable[[Target], int]) -> int:
    """Find the pipeline replica and run ``work`` against it; map what can go wrong to a
    message on stderr and the exit code (2 invalid input, 1 anything else)."""
    try:
        return work(Target.find(state_dir, address))
    except CliError as exc:
        print(f"phoenixctl {command}: {exc}", file=sys.stderr)
        return exc.code
    except grpc.aio.AioRpcError as exc:
        return report_rpc_error(command, exc)
    except OSError as exc:
        print(f"phoenixctl {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def report_rpc_error(command: str, exc: grpc.aio.AioRpcError) -> int:
    """Print the server's message and violations to stderr; return the exit code."""
    code = exc.code()
    violations = [v for key, value in exc.trailing_metadata() or ()
                  if key == ERROR_DETAIL_KEY and isinstance(value, bytes)
                  for v in common_pb2.ErrorDetail.FromString(value).violations]
    # With several violations the message names them all in one line; list them instead.
    message = (f"{len(violations)} problems" if len(violations) > 1 else exc.details())
    print(f"phoenixctl {command}: {code.name if code else 'UNKNOWN'}: {message}",
          file=sys.stderr)
    if len(violations) > 1:
        for violation in violations:
            print(f"  - {violation.field}: {violation.description}", file=sys.stderr)
    return EXIT_INVALID if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED


def _documents(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is neither YAML nor JSON: {exc}", EXIT_INVALID) from None
    out: list[Any] = []
    for doc in docs:
        out.extend(doc if isinstance(doc, list) else [doc])
    if not out:
        raise CliError(f"{path} holds no policy document", EXIT_INVALID)
    return out


def _field(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(key)
    return found or next((f for f in descriptor.fields if f.json_name == key), None)


def _with_durations(doc: Any, descriptor: Descriptor) -> Any:
    """``doc`` with durations people write (``5m``, ``1h30m``) as protobuf JSON wants them
    (``300s``); anything else is left for the parser to judge."""
    if not isinstance(doc, dict):
        return doc
    out = dict(doc)
    for key, value in doc.items():
        field = _field(descriptor, key) if isinstance(key, str) else None
        if field is None or field.message_type is None:
            continue
        if field.message_type.full_name == "google.protobuf.Duration" and isinstance(value, str):
            with contextlib.suppress(ValueError):
                seconds = parse_duration(value).total_seconds()
                out[key] = (f"{int(seconds)}s" if seconds.is_integer()
                            else f"{seconds:.9f}".rstrip("0") + "s")
        elif isinstance(value, list):
            out[key] = [_with_durations(v, field.message_type) for v in value]
        else:
            out[key] = _with_durations(value, field.message_type)
    return out


def load_policies(path: str, tenant: str | None) -> list[state_pb2.Policy]:
    """The Policy documents (state.proto, as YAML or JSON: one, a list, or several YAML
    documents) in ``path`` ("-": stdin). ``tenant`` fills documents that name none and must
    agree with those that do; without either the tenant is ``default``."""
    policies = []
    for i, doc in enumerate(_documents(path)):
        where = f"{path}, document {i + 1}"
        if not isinstance(doc, dict):
            raise CliError(f"{where}: expected a Policy mapping (id, match, an action ...), "
                           f"got {type(doc).__name__}", EXIT_INVALID)
        try:
            policy = json_format.ParseDict(_with_durations(doc, state_pb2.Policy.DESCRIPTOR),
                                           state_pb2.Policy())
        except json_format.ParseError as exc:
            raise CliError(f"{where}: not a Policy document (state.proto): {exc}",
                           EXIT_INVALID) from None
        if tenant and policy.tenant and policy.tenant != tenant:
            raise CliError(f"{where}: the document's tenant is {policy.tenant!r} but --tenant "
                           f"says {tenant!r}; drop one of them", EXIT_INVALID)
        policy.tenant = policy.tenant or tenant or DEFAULT_TENANT
        policies.append(policy)
    return policies


def as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))

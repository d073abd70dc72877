"""Receivers' decoding: Prometheus remote-write and OTLP into one internal batch format.

Every function here is pure CPU work on bytes (no sockets): the HTTP and gRPC servers of
metrics-pipeline call them and map :class:`~phoenixcp.errors.InvalidArgument` to 400 /
INVALID_ARGUMENT (415 when ``field == "Content-Type"`` or ``"Content-Encoding"``).

The HTTP/1.1 server those receivers run on is :mod:`phoenixcp.platform.http` (ADR 0010).
"""

from phoenixcp.platform.ingest.columns import decode_columns
from phoenixcp.platform.ingest.otlp import Rejected, decode_otlp, export_response
from phoenixcp.platform.ingest.otlp_http import decode_otlp_http
from phoenixcp.platform.ingest.remote_write import (
    DEFAULT_MAX_BYTES,
    SCANNER,
    decode_remote_write,
    validate_write_request,
)
from phoenixcp.platform.ingest.tenancy import (
    DEFAULT_TENANT,
    TENANT_HEADER,
    TENANT_METADATA_KEY,
    resolve_tenant,
    validate_tenant,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TENANT",
    "SCANNER",
    "TENANT_HEADER",
    "TENANT_METADATA_KEY",
    "Rejected",
    "decode_columns",
    "decode_otlp",
    "decode_otlp_http",
    "decode_remote_write",
    "export_response",
    "resolve_tenant",
    "validate_tenant",
    "validate_write_request",
]

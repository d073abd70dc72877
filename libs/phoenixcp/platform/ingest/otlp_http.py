"""OTLP/HTTP ``POST /v1/metrics`` bodies → a batch and its partial success.

Only binary protobuf (``Content-Type: application/x-protobuf``) is served; JSON
(``application/json``) is refused with InvalidArgument(field="Content-Type"), which the HTTP
server answers with 415. ``Content-Encoding: gzip`` is inflated with zlib's streaming API and
a hard output bound (``max_bytes``), so a gzip bomb is refused after at most ``max_bytes`` of
output; cramjam cannot bound its output, hence zlib (also C) here.

The body, inflated, goes to :func:`~phoenixcp.platform.ingest.otlp.decode_otlp` as bytes, as
OTLP/gRPC's request does: no protobuf parse, and one decoder with the same answers for both
receivers (bytes that are not a request: InvalidArgument, "the request is not a valid OTLP
ExportMetricsServiceRequest: ...").
"""

from __future__ import annotations

import zlib

from phoenixcp.core.batch import MetricBatch
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest.otlp import Rejected, decode_otlp
from phoenixcp.platform.ingest.remote_write import DEFAULT_MAX_BYTES

__all__ = ["PROTOBUF_CONTENT_TYPES", "decode_otlp_http", "gunzip"]

PROTOBUF_CONTENT_TYPES = ("application/x-protobuf", "application/protobuf")


def gunzip(body: bytes, *, max_bytes: int) -> bytes:
    """Inflate a gzip body (several members allowed) to at most ``max_bytes``."""
    out = bytearray()
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes or inflater.unconsumed_tail:
                raise InvalidArgument(
                    f"the gzip body inflates to more than the limit of {max_bytes} bytes; "
                    "send smaller batches"
                )
            if not inflater.eof:
                raise InvalidArgument("the gzip body is truncated")
            data = inflater.unused_data
    except zlib.error as exc:
        raise InvalidArgument(f"the body is not valid gzip: {exc}") from None
    return bytes(out)


def decode_otlp_http(
    body: bytes,
    *,
    tenant: str,
    content_type: str | None,
    content_encoding: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    received_at: int | None = None,
) -> tuple[MetricBatch, Rejected]:
    """Decode one OTLP/HTTP metrics body; bad bodies raise InvalidArgument (HTTP 400, or
    415 when ``exc.field == "Content-Type"``)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in PROTOBUF_CONTENT_TYPES:
        raise InvalidArgument(
            f"Content-Type {content_type!r} is not supported; send OTLP as binary protobuf "
            "(Content-Type: application/x-protobuf); JSON is not served",
            field="Content-Type",
        )
    if len(body) > max_bytes:
        raise InvalidArgument(
            f"the request body is {len(body)} bytes, over the limit of {max_bytes} bytes"
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = gunzip(body, max_bytes=max_bytes)
    elif encoding != "identity":
        raise InvalidArgument(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip or none",
            field="Content-Encoding",
        )
    return decode_otlp(body, tenant=tenant, received_at=received_at)

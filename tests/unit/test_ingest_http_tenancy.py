"""OTLP/HTTP body decoding and tenant resolution."""

from __future__ import annotations

import gzip
import types

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

import phoenixcp.platform.ingest as ingest
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import decode_otlp_http, resolve_tenant

pytestmark = pytest.mark.unit
PB = "application/x-protobuf"


def body() -> bytes:
    req = ExportMetricsServiceRequest()
    metric = req.resource_metrics.add().scope_metrics.add().metrics.add(name="up")
    metric.gauge.data_points.add(as_int=1, time_unix_nano=1_000_000)
    return req.SerializeToString()


def test_all_matches_the_public_names() -> None:
    """Submodules become attributes once anything imports them: they are not names."""
    assert sorted(ingest.__all__) == sorted(
        n for n in dir(ingest)
        if not n.startswith("_") and not isinstance(getattr(ingest, n), types.ModuleType))


def test_protobuf_plain_and_gzip() -> None:
    batch, rejected = decode_otlp_http(body(), tenant="t", content_type=PB)
    assert batch.sample_count == 1 and rejected.data_points == 0
    batch, _ = decode_otlp_http(gzip.compress(body()), tenant="t",
                                content_type=PB + "; charset=x", content_encoding="gzip")
    assert batch.sample_count == 1


def test_bad_bodies() -> None:
    with pytest.raises(InvalidArgument, match="JSON is not served") as e:
        decode_otlp_http(b"{}", tenant="t", content_type="application/json")
    assert e.value.field == "Content-Type"
    with pytest.raises(InvalidArgument, match="not valid gzip"):
        decode_otlp_http(b"\x1f\x8bxx", tenant="t", content_type=PB, content_encoding="gzip")
    with pytest.raises(InvalidArgument, match="inflates to more than the limit of 1000"):
        decode_otlp_http(gzip.compress(b"\0" * 100_000), tenant="t", content_type=PB,
                         content_encoding="gzip", max_bytes=1000)
    with pytest.raises(InvalidArgument, match="not a valid OTLP ExportMetricsServiceRequest"):
        decode_otlp_http(b"\x0a\x05\x01", tenant="t", content_type=PB)
    with pytest.raises(InvalidArgument, match="Content-Encoding 'br'"):
        decode_otlp_http(body(), tenant="t", content_type=PB, content_encoding="br")


def test_tenant_resolution() -> None:
    assert resolve_tenant("team-a", spiffe_id="spiffe://phoenix/x") == "team-a"
    assert resolve_tenant(None, spiffe_id="spiffe://phoenix/tenants/team_b") == "team_b"
    assert resolve_tenant("", spiffe_id="spiffe://phoenix") == "default"
    assert resolve_tenant(None) == "default"
    with pytest.raises(InvalidArgument, match=r"tenant 'a/b' is not valid; tenant names match"):
        resolve_tenant("a/b")
    with pytest.raises(InvalidArgument, match="SPIFFE ID: tenant"):
        resolve_tenant(None, spiffe_id="spiffe://phoenix/-bad")
    with pytest.raises(InvalidArgument):
        resolve_tenant("x" * 65)

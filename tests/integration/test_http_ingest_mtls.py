"""HTTP ingest over mTLS: the tenant is X-Scope-OrgID, else the client certificate's SPIFFE
ID (as for OTLP/gRPC), else ``default``."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from metrics_pipeline.ingest_http import HttpIngest
from metrics_pipeline.ingest_metrics import IngestMetrics
from phoenixcp.core.batch import MetricBatch
from phoenixcp.platform.tls import LocalCA
from tests.integration._pipeline_support import snappy, write_request

pytestmark = pytest.mark.integration


async def test_the_client_certificate_names_the_tenant_unless_the_header_does(
        tmp_path: Path) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    hour = dt.timedelta(hours=1)
    ca_file, cert, key = ca.issue("metrics-pipeline", ttl=hour).write(tmp_path / "s", "s")
    _, client_cert, client_key = ca.issue("team-a", ttl=hour).write(tmp_path / "c", "c")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    server_ctx.load_cert_chain(cert, key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    client_ctx.load_cert_chain(client_cert, client_key)
    tenants: list[str] = []

    async def accept(batch: MetricBatch) -> None:
        tenants.append(batch.tenant)

    ingest = HttpIngest(host="127.0.0.1", port=0, max_bytes=1 << 20, accept=accept,
                        metrics=IngestMetrics(CollectorRegistry()), ssl_context=server_ctx)
    port = await ingest.start()
    body = snappy(write_request([((("__name__", "up"),), [(1000, 1.0)])]))
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    try:
        async with aiohttp.ClientSession() as session:
            for extra in ({}, {"X-Scope-OrgID": "team-b"}):
                async with session.post(f"https://localhost:{port}/api/v1/write", data=body,
                                        headers={**headers, **extra}, ssl=client_ctx) as r:
                    assert r.status == 204, await r.text()
    finally:
        await ingest.shutdown()
    assert tenants == ["team-a", "team-b"]

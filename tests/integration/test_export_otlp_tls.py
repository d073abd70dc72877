"""OTLP/gRPC over TLS: queue → ExportWorker → OtlpExporter → a real ``grpc.aio`` MetricsService
on 127.0.0.1 serving a certificate from the repository's local CA (and asking for client
certificates when a test says so).

A receiver the exporter cannot verify, or one that refuses it, holds the data back: the worker
retries, logs gRPC's reason, and nothing leaves the queue until the configuration is fixed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from prometheus_client import CollectorRegistry

from metrics_pipeline.forwarding import Forwarder
from phoenixcp.core.batch import MetricBatch
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.export import (
    ExportResult,
    OtlpExporter,
    OtlpExporterConfig,
)
from tests.integration._coord_support import wait_until
from tests.integration._export_support import Pki, numbered, queue_at, retryable, running
from tests.integration.test_export_otlp import Receiver, metrics_by_name

pytestmark = pytest.mark.integration

#: What gRPC reports for every failed connection, TLS or not.
NO_CONNECTION = "UNAVAILABLE: failed to connect to all addresses; last error: "


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), backend="collector",
               dns_name="collector.internal")


def server_credentials(pki: Pki, *, mtls: bool, named: bool) -> grpc.ServerCredentials:
    """The receiver's side: its certificate, and the client's required when ``mtls``."""
    cert, key = pki.server_pair(named=named)
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(pki.ca_file).read_bytes() if mtls else None,
        require_client_auth=mtls)


ReceiverFactory = Callable[..., Awaitable[tuple[Receiver, str]]]


@pytest.fixture
async def tls_receiver(pki: Pki) -> AsyncIterator[ReceiverFactory]:
    """Starts receivers on 127.0.0.1 (port 0): TLS unless ``plaintext``; returns the servicer
    and the target. All are stopped when the test ends."""
    servers: list[grpc.aio.Server] = []

    async def start(*, mtls: bool = False, named: bool = False,
                    plaintext: bool = False) -> tuple[Receiver, str]:
        server = grpc.aio.server()
        servers.append(server)
        servicer = Receiver()
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server)
        port = (server.add_insecure_port("127.0.0.1:0") if plaintext else
                server.add_secure_port("127.0.0.1:0",
                                       server_credentials(pki, mtls=mtls, named=named)))
        await server.start()
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


@pytest.fixture(autouse=True)
def grpc_default_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reasons below name grpcio's bundled roots, which this variable would replace."""
    monkeypatch.delenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", raising=False)




@contextlib.asynccontextmanager
async def exporter_for(config: OtlpExporterConfig) -> AsyncIterator[OtlpExporter]:
    exporter = OtlpExporter(config=config)
    try:
        yield exporter
    finally:
        await exporter.shutdown()



def points(receiver: Receiver) -> list[float]:
    return [p.as_double for r in receiver.requests for m in metrics_by_name(r).values()
            for p in m.gauge.data_points]



async def test_with_ca_file_a_batch_is_delivered(pki: Pki, tls_receiver: ReceiverFactory,
                                                 tmp_path: Path) -> None:
    receiver, target = await tls_receiver()
    config = OtlpExporterConfig(target=target, ca_file=pki.ca_file)
    assert config.tls
    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(), config) as w:
        for b in range(4):
            await queue.append(numbered(b), count=50)
        assert await w.force_flush(10)
        assert len(points(receiver)) == 200 and len(queue) == 0
        assert await w.shutdown(5)


async def test_without_the_ca_verification_fails_and_the_records_stay_queued(
        pki: Pki, tls_receiver: ReceiverFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver, target = await tls_receiver()
    registry = CollectorRegistry()
    bundled_roots = OtlpExporterConfig(target=target, insecure=False)
    async with queue_at(tmp_path) as queue, running(queue, registry, bundled_roots) as w:
        for b in range(3):
            await queue.append(numbered(b), count=50)
        await wait_until(lambda: retryable(registry, "otlp") >= 3, 10.0)
        assert len(queue) == 3 and receiver.requests == []
        assert (registry.get_sample_value("phoenix_export_samples_total",
                                          {"exporter": "otlp", "outcome": "retried"})
                or 0) > 0
        assert not await w.shutdown(0.2)
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("export failed")]
    reason: str = logged.fields["reason"]  # type: ignore[attr-defined]
    assert reason.startswith(NO_CONNECTION + f"UNKNOWN: ipv4:{target}: Tls handshake failed")
    assert "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate" in reason
    assert reason.endswith("(checked against the CA roots bundled with grpcio, for the name "
                           "127.0.0.1)")

    # The configuration fixed, the next start delivers everything that was queued.
    fixed = OtlpExporterConfig(target=target, ca_file=pki.ca_file)
    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(), fixed) as w:
        assert await w.force_flush(10)
        assert len(points(receiver)) == 150 and len(queue) == 0


async def test_mtls_client_certificate(pki: Pki, tls_receiver: ReceiverFactory,
                                       tmp_path: Path) -> None:
    receiver, target = await tls_receiver(mtls=True)
    with_cert = OtlpExporterConfig(target=target, ca_file=pki.ca_file,
                                   cert_file=pki.client_cert, key_file=pki.client_key)
    async with exporter_for(with_cert) as exporter:
        outcome = await exporter.export(numbered(0), tenant="")
        assert outcome.result is ExportResult.SUCCESS, outcome.reason
    assert len(points(receiver)) == 50

    without = OtlpExporterConfig(target=target, ca_file=pki.ca_file)
    async with exporter_for(without) as exporter:
        outcome = await exporter.export(numbered(1), tenant="")
    # The receiver ends the handshake; gRPC sees only the socket closing (no hint appended:
    # the receiver's certificate was fine).
    assert outcome.result is ExportResult.RETRYABLE
    assert outcome.reason == NO_CONNECTION + f"UNAVAILABLE: ipv4:{target}: Socket closed"

    registry = CollectorRegistry()
    async with queue_at(tmp_path) as queue, running(queue, registry, without) as w:
        await queue.append(numbered(1), count=50)
        await wait_until(lambda: retryable(registry, "otlp") >= 2, 10.0)
        assert len(receiver.requests) == 1 and len(queue) == 1  # refused: nothing got through
        assert not await w.shutdown(0.2)

    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(),
                                                    with_cert) as w:
        assert await w.force_flush(10)
        assert len(points(receiver)) == 100


async def test_server_name_is_checked_instead_of_the_target_host(
        pki: Pki, tls_receiver: ReceiverFactory) -> None:
    receiver, target = await tls_receiver(named=True)  # a certificate for collector.internal
    async with exporter_for(OtlpExporterConfig(target=target, ca_file=pki.ca_file)) as by_target:
        outcome = await by_target.export(numbered(0), tenant="")
    assert outcome.result is ExportResult.RETRYABLE
    assert outcome.reason.startswith(NO_CONNECTION)
    assert "Hostname Verification Check failed" in outcome.reason
    assert outcome.reason.endswith(f"(checked against ca_file {pki.ca_file}, for the name "
                                   "127.0.0.1)")

    named = OtlpExporterConfig(target=target, ca_file=pki.ca_file,
                               server_name="collector.internal")
    async with exporter_for(named) as exporter:
        outcome = await exporter.export(numbered(0), tenant="")
        assert outcome.result is ExportResult.SUCCESS, outcome.reason
    assert len(points(receiver)) == 50


async def test_a_plaintext_exporter_is_refused_by_a_tls_receiver(
        tls_receiver: ReceiverFactory) -> None:
    receiver, target = await tls_receiver()
    async with exporter_for(OtlpExporterConfig(target=target)) as exporter:
        outcome = await exporter.export(numbered(0), tenant="")
    assert outcome.result is ExportResult.RETRYABLE
    assert outcome.reason == NO_CONNECTION + f"UNAVAILABLE: ipv4:{target}: Socket closed"
    assert receiver.requests == []


async def test_the_config_file_path_reaches_an_mtls_receiver(
        pki: Pki, tls_receiver: ReceiverFactory, tmp_path: Path) -> None:
    secure, secure_target = await tls_receiver(mtls=True)
    plain, plain_target = await tls_receiver(plaintext=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
pipeline:
  exporters:
    - name: secure
      type: otlp
      endpoint: {secure_target}
      flush_interval: 50ms
      ca_file: {pki.ca_file}
      cert_file: {pki.client_cert}
      key_file: {pki.client_key}
    - name: plain                 # no TLS key: plaintext, as before TLS keys existed
      type: otlp
      endpoint: {plain_target}
      flush_interval: 50ms
""")
    config = load_service_config(path, "metrics-pipeline", environ={})
    forwarder = Forwarder(config=config.pipeline, data_dir=tmp_path / "data",
                          registry=CollectorRegistry())
    await forwarder.start()
    try:
        await forwarder.accept(MetricBatch(tenant="acme", write_request=numbered(7),
                                           series_keys=np.zeros(10, np.uint64),
                                           sample_count=50, received_at=0))
        await wait_until(lambda: len(points(secure)) == 50 and len(points(plain)) == 50, 10.0)
    finally:
        await forwarder.shutdown(grace=1.0)
    assert sorted(points(secure)) == sorted(points(plain))

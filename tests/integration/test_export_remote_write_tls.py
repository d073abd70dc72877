"""Remote-write over HTTPS: queue → ExportWorker → RemoteWriteExporter → a CountingSink that
serves TLS with a certificate from the repository's local CA (and asks for client
certificates when a test says so).

A backend the exporter cannot verify, or one that refuses it, holds the data back: the worker
retries, logs the reason, and nothing leaves the queue until the configuration is fixed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from metrics_pipeline.forwarding import Forwarder
from phoenixcp.core.batch import MetricBatch
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.export import (
    ExportResult,
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from phoenixcp.platform.export.sink import CountingSink
from tests.integration._coord_support import wait_until
from tests.integration._export_support import (
    Pki,
    numbered,
    queue_at,
    retryable,
    running,
    sample_values,
)

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), backend="backend", dns_name="backend.internal")


def server_context(pki: Pki, *, mtls: bool = False, named: bool = False) -> ssl.SSLContext:
    """The HTTPS sink's side: its certificate, and the client's checked when ``mtls``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca_file)
    context.load_cert_chain(*pki.server_pair(named=named))
    context.verify_mode = ssl.CERT_REQUIRED if mtls else ssl.CERT_NONE
    return context


SinkFactory = Callable[..., Awaitable[CountingSink]]


@pytest.fixture
async def https_sink(pki: Pki) -> AsyncIterator[SinkFactory]:
    sinks: list[CountingSink] = []

    async def start(*, mtls: bool = False, named: bool = False) -> CountingSink:
        sink = CountingSink(keep_bodies=True,
                            ssl_context=server_context(pki, mtls=mtls, named=named))
        await sink.start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        await sink.stop()






async def test_with_ca_file_a_batch_is_delivered(pki: Pki, https_sink: SinkFactory,
                                                 tmp_path: Path) -> None:
    sink = await https_sink()
    assert sink.url.startswith("https://127.0.0.1:")
    config = RemoteWriteConfig(url=sink.url, ca_file=str(pki.ca_file))
    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(), config) as w:
        for b in range(4):
            await queue.append(numbered(b), count=50)
        assert await w.force_flush(10)
        assert sink.counts.samples == 200 and len(queue) == 0
        assert sorted(sample_values(sink.bodies)) == sorted(
            sample_values([numbered(b) for b in range(4)]))
        assert await w.shutdown(5)


async def test_without_ca_file_verification_fails_and_the_records_stay_queued(
        pki: Pki, https_sink: SinkFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    sink = await https_sink()
    registry = CollectorRegistry()
    system_roots = RemoteWriteConfig(url=sink.url)
    async with queue_at(tmp_path) as queue, running(queue, registry, system_roots) as w:
        for b in range(3):
            await queue.append(numbered(b), count=50)
        await wait_until(lambda: retryable(registry, "remote-write") >= 3, 10.0)
        assert len(queue) == 3 and sink.counts.requests == 0
        assert (registry.get_sample_value("phoenix_export_samples_total",
                                          {"exporter": "remote-write", "outcome": "retried"})
                or 0) > 0
        assert not await w.shutdown(0.2)
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("export failed")]
    reason: str = logged.fields["reason"]  # type: ignore[attr-defined]
    assert reason.startswith(f"ConnectError: TLS handshake with {sink.url.split('/')[2]} "
                             "failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                             "failed")
    assert reason.endswith("(checked against the system's CA roots, for the name 127.0.0.1)")

    # The configuration fixed, the next start delivers everything that was queued.
    fixed = RemoteWriteConfig(url=sink.url, ca_file=str(pki.ca_file))
    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(), fixed) as w:
        assert await w.force_flush(10)
        assert sink.counts.samples == 150 and len(queue) == 0


async def test_mtls_client_certificate(pki: Pki, https_sink: SinkFactory,
                                       tmp_path: Path) -> None:
    sink = await https_sink(mtls=True)
    with_cert = RemoteWriteConfig(url=sink.url, ca_file=str(pki.ca_file),
                                  cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    exporter = RemoteWriteExporter(config=with_cert)
    assert (await exporter.export(numbered(0), tenant="")).result is ExportResult.SUCCESS
    assert sink.counts.samples == 50
    await exporter.shutdown()

    registry = CollectorRegistry()
    without = RemoteWriteConfig(url=sink.url, ca_file=str(pki.ca_file))
    async with queue_at(tmp_path) as queue, running(queue, registry, without) as w:
        await queue.append(numbered(1), count=50)
        await wait_until(lambda: retryable(registry, "remote-write") >= 2, 10.0)
        assert sink.counts.requests == 1 and len(queue) == 1  # refused: nothing got through
        assert not await w.shutdown(0.2)

    async with queue_at(tmp_path) as queue, running(queue, CollectorRegistry(),
                                                    with_cert) as w:
        assert await w.force_flush(10)
        assert sink.counts.samples == 100



async def test_server_name_is_checked_instead_of_the_url_host(pki: Pki,
                                                              https_sink: SinkFactory) -> None:
    sink = await https_sink(named=True)  # a certificate for backend.internal only
    by_url = RemoteWriteExporter(config=RemoteWriteConfig(url=sink.url,
                                                          ca_file=str(pki.ca_file)))
    outcome = await by_url.export(numbered(0), tenant="")
    assert outcome.result is ExportResult.RETRYABLE
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in outcome.reason
    assert outcome.reason.endswith(f"(checked against ca_file {pki.ca_file}, for the name "
                                   "127.0.0.1)")
    await by_url.shutdown()

    named = RemoteWriteExporter(config=RemoteWriteConfig(
        url=sink.url, ca_file=str(pki.ca_file), server_name="backend.internal"))
    assert (await named.export(numbered(0), tenant="")).result is ExportResult.SUCCESS
    await named.shutdown()

    unverified = RemoteWriteExporter(config=RemoteWriteConfig(url=sink.url,
                                                              insecure_skip_verify=True))
    assert (await unverified.export(numbered(1), tenant="")).result is ExportResult.SUCCESS
    await unverified.shutdown()
    assert sink.counts.samples == 100


async def test_the_config_file_path_reaches_an_mtls_backend(
        pki: Pki, https_sink: SinkFactory, tmp_path: Path) -> None:
    sink = await https_sink(mtls=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
pipeline:
  exporters:
    - name: secure
      type: remote-write
      endpoint: {sink.url}
      flush_interval: 50ms
      ca_file: {pki.ca_file}
      cert_file: {pki.client_cert}
      key_file: {pki.client_key}
""")
    config = load_service_config(path, "metrics-pipeline", environ={})
    forwarder = Forwarder(config=config.pipeline, data_dir=tmp_path / "data",
                          registry=CollectorRegistry())
    await forwarder.start()
    body = numbered(7)
    await forwarder.accept(MetricBatch(tenant="acme", write_request=body,
                                       series_keys=np.zeros(10, np.uint64), sample_count=50,
                                       received_at=0))
    await wait_until(lambda: sink.counts.samples == 50, 10.0)
    assert sink.bodies == [body]
    await forwarder.shutdown()

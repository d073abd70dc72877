"""What the export tests share: remote-write requests built with the generated Prometheus
stubs, a fast worker config, a queue and worker that stop in order, and the certificates of
the TLS tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from phoenixcp.api.prometheus import remote_pb2, types_pb2
from phoenixcp.platform.export import (
    ExportMetrics,
    ExportWorker,
    ExportWorkerConfig,
    OtlpExporter,
    OtlpExporterConfig,
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from phoenixcp.platform.queue import DurableQueue, QueueConfig
from phoenixcp.platform.tls import LocalCA

FAST = ExportWorkerConfig(max_samples=200, flush_interval=timedelta(milliseconds=50),
                          backoff_initial=timedelta(milliseconds=10),
                          backoff_max=timedelta(milliseconds=100))
"""Small batches, sent within 50 ms, retried after 10-100 ms: tests see outcomes quickly."""

_HOUR = timedelta(hours=1)


@contextlib.asynccontextmanager
async def queue_at(directory: Path) -> AsyncIterator[DurableQueue]:
    """The queue in ``directory``; opening it again is a restart (unacknowledged records are
    handed out again)."""
    async with DurableQueue(config=QueueConfig(directory=directory, name="export")) as q:
        yield q


@contextlib.asynccontextmanager
async def running(queue: DurableQueue, registry: CollectorRegistry,
                  config: RemoteWriteConfig | OtlpExporterConfig) -> AsyncIterator[ExportWorker]:
    """A worker (``FAST``) on ``queue`` exporting with ``config``, shut down (its exporter
    closed) before the queue closes, whatever the test did."""
    exporter = (RemoteWriteExporter(config=config) if isinstance(config, RemoteWriteConfig)
                else OtlpExporter(config=config))
    w = ExportWorker(queue=queue, exporter=exporter, config=FAST,
                     metrics=ExportMetrics(registry))
    w.start()
    try:
        yield w
    finally:
        await w.shutdown(0.2)


def retryable(registry: CollectorRegistry, exporter: str) -> float:
    """Export requests ``exporter`` counted as retryable so far."""
    return registry.get_sample_value("phoenix_export_requests_total",
                                     {"exporter": exporter, "result": "retryable"}) or 0


class Pki:
    """Under ``directory``: the local CA's bundle (``ca_file``), a backend's certificate for
    the loopback names (``server_*``) and one for ``dns_name`` only (``named_*``), and a
    client certificate for the exporter (``client_*``); paths as strings."""

    def __init__(self, directory: Path, *, backend: str, dns_name: str) -> None:
        ca = LocalCA.open(directory / "ca")
        self.ca_file, self.server_cert, self.server_key = (str(p) for p in ca.issue(
            backend, ttl=_HOUR).write(directory, "server"))
        _, self.named_cert, self.named_key = (str(p) for p in ca.issue(
            backend, ttl=_HOUR, hosts=[dns_name]).write(directory, "named"))
        _, self.client_cert, self.client_key = (str(p) for p in ca.issue(
            "metrics-pipeline", ttl=_HOUR).write(directory, "client"))

    def server_pair(self, *, named: bool) -> tuple[str, str]:
        """(certificate, key) the backend serves."""
        return ((self.named_cert, self.named_key) if named
                else (self.server_cert, self.server_key))

MetricType = types_pb2.MetricMetadata.MetricType


def write_request(series: list[tuple[dict[str, str], list[tuple[int, float]]]],
                  metadata: dict[str, int] | None = None) -> bytes:
    """A serialized WriteRequest: (labels, [(timestamp_ms, value)]) per series."""
    request = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in sorted(labels.items()):
            ts.labels.add(name=name, value=value)
        for timestamp, sample in samples:
            ts.samples.add(timestamp=timestamp, value=sample)
    for family, kind in (metadata or {}).items():
        request.metadata.add(metric_family_name=family, type=kind)
    return request.SerializeToString()


def numbered(batch: int, series: int = 10, samples: int = 5, marker: str = "ok") -> bytes:
    """``series`` series with ``samples`` samples each; values encode (batch, series, i)."""
    return write_request([
        ({"__name__": "phoenix_test_total", "batch": str(batch), "s": str(s), "m": marker},
         [(1_700_000_000_000 + i, float(batch * 1_000_000 + s * 1000 + i))
          for i in range(samples)])
        for s in range(series)
    ])


def sample_values(bodies: list[bytes]) -> list[float]:
    """Every sample value in these WriteRequest bodies."""
    values: list[float] = []
    for body in bodies:
        for ts in remote_pb2.WriteRequest.FromString(body).timeseries:
            values.extend(s.value for s in ts.samples)
    return values

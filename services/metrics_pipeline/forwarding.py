"""One durable queue and one export worker per configured backend.

An accepted batch is appended to every exporter's queue before the sender gets its answer,
so it survives a backend outage and a crash of this process. A full queue pushes back with
:class:`~phoenixcp.errors.ResourceExhausted` (429 / RESOURCE_EXHAUSTED); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import cramjam
from prometheus_client import CollectorRegistry

from phoenixcp.core.batch import MetricBatch
from phoenixcp.errors import ResourceExhausted
from phoenixcp.platform.export import (
    Exporter,
    ExportMetrics,
    ExportWorker,
    ExportWorkerConfig,
    OtlpExporter,
    OtlpExporterConfig,
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from phoenixcp.platform.pipeline_config import ExporterConfig, PipelineConfig
from phoenixcp.platform.queue import DurableQueue, FsyncPolicy, QueueConfig, QueueMetrics
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

_SEGMENT_BYTES = 16 * 1024 * 1024


def _exporter(config: ExporterConfig, worker: ExportWorkerConfig) -> Exporter:
    if config.type == "otlp":
        return OtlpExporter(config=OtlpExporterConfig(
            target=config.endpoint, name=config.name, timeout=config.timeout,
            tenant_header=config.tenant_header, insecure=config.insecure,
            ca_file=config.ca_file, cert_file=config.cert_file, key_file=config.key_file,
            server_name=config.server_name,
            # gRPC reconnects as often as the worker retries, not up to 2 minutes later
            reconnect_backoff_max=worker.backoff_max))
    return RemoteWriteExporter(config=RemoteWriteConfig(
        url=config.endpoint, name=config.name, timeout=config.timeout,
        tenant_header=config.tenant_header, ca_file=config.ca_file,
        cert_file=config.cert_file, key_file=config.key_file, server_name=config.server_name,
        insecure_skip_verify=config.insecure_skip_verify))


@dataclass
class _Route:
    config: ExporterConfig
    queue: DurableQueue
    worker: ExportWorker


class Forwarder:
    """The queues and workers of every exporter. ``start``/``shutdown`` (idempotent)."""

    def __init__(self, *, config: PipelineConfig, data_dir: Path,
                 registry: CollectorRegistry) -> None:
        queue_metrics = QueueMetrics(registry)
        export_metrics = ExportMetrics(registry)
        self._routes: list[_Route] = []
        for exporter in config.exporters:
            queue = DurableQueue(config=QueueConfig(
                directory=data_dir / "queue" / exporter.name, name=exporter.name,
                max_bytes=config.queue_max_bytes, fsync=FsyncPolicy(config.queue_fsync),
                fsync_interval=config.queue_fsync_interval,
                preallocate=config.queue_preallocate,
                # Small queues get small segments, so space frees up as records are sent.
                segment_bytes=min(_SEGMENT_BYTES, config.queue_max_bytes // 4),
            ), metrics=queue_metrics)
            worker_config = ExportWorkerConfig(
                max_samples=exporter.batch_samples, concurrency=exporter.concurrency,
                flush_interval=exporter.flush_interval, snappy_payloads=True)
            worker = ExportWorker(
                queue=queue, exporter=_exporter(exporter, worker_config),
                metrics=export_metrics, config=worker_config)
            self._routes.append(_Route(exporter, queue, worker))
        self._closed = False

    async def start(self) -> None:
        for route in self._routes:
            await route.queue.start()
            route.worker.start()
            log.info("exporter started", extra={"fields": {
                "exporter": route.config.name, "type": route.config.type,
                "endpoint": redacted_endpoint(route.config.endpoint),
                "queued_records": len(route.queue)}})

    def check_room(self, nbytes: int) -> None:
        """ResourceExhausted unless every queue has room for a record of ``nbytes``."""
        for route in self._routes:
            if route.queue.size_bytes + nbytes > route.queue.config.max_bytes:
                raise ResourceExhausted(
                    f"the queue of exporter {route.config.name!r} is full "
                    f"({route.queue.size_bytes} of {route.queue.config.max_bytes} bytes); "
                    "its backend is down or slower than the input",
                    retry_after=route.queue.config.full_retry_after.total_seconds())

    @property
    def names(self) -> tuple[str, ...]:
        """The exporters' names, in configuration order."""
        return tuple(route.config.name for route in self._routes)

    async def accept(self, batch: MetricBatch, *, only: str | None = None,
                     skip: frozenset[str] = frozenset()) -> None:
        """Queue ``batch`` for every exporter (just ``only``, or all but ``skip``);
        ResourceExhausted when any queue is full.

        Room is checked in every queue first, so a refusal normally changes nothing; if a
        queue fills in between, the sender's retry is delivered twice to the exporters that
        took the first copy (at least once, never lost).
        """
        # Records are queued snappy-compressed: 3-5x less disk and I/O, and a request that
        # arrived compressed leaves without being compressed again.
        payload = batch.compressed or bytes(cramjam.snappy.compress_raw(batch.write_request))
        self.check_room(len(payload))
        routes = self._routes
        if only is not None or skip:
            routes = [r for r in routes if (r.config.name == only if only is not None
                                            else r.config.name not in skip)]
        if len(routes) == 1:  # the common case: no gather, whose tasks cost loop turns
            await routes[0].queue.append(payload, count=batch.sample_count,
                                         tenant=batch.tenant)
            return
        await asyncio.gather(*(
            route.queue.append(payload, count=batch.sample_count,
                               tenant=batch.tenant)
            for route in routes))

    async def shutdown(self, grace: float = 5.0) -> None:
        """Send what can be sent within ``grace``; the rest stays queued for the next start."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(r.worker.shutdown(grace) for r in self._routes))
        for route in self._routes:
            await route.queue.close()

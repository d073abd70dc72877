"""Exporters and the worker that drains a durable queue into one of them.

:class:`RemoteWriteExporter` (Prometheus remote-write 1.0) and :class:`OtlpExporter`
(OTLP/gRPC) implement the :class:`Exporter` port and return an :class:`ExportOutcome`, never
raising; :class:`ExportWorker` batches, retries and dead-letters. The null backend,
``CountingSink``, is in :mod:`~phoenixcp.platform.export.sink` (not imported here: it pulls in
aiohttp, which the services do not otherwise load).
"""

from __future__ import annotations

from phoenixcp.platform.export.config import (
    ExportWorkerConfig,
    OtlpExporterConfig,
    RemoteWriteConfig,
)
from phoenixcp.platform.export.metrics import ExportMetrics
from phoenixcp.platform.export.otlp import OtlpExporter
from phoenixcp.platform.export.remote_write import RemoteWriteExporter
from phoenixcp.platform.export.result import Exporter, ExportOutcome, ExportResult
from phoenixcp.platform.export.worker import ExportWorker

__all__ = [
    "ExportMetrics",
    "ExportOutcome",
    "ExportResult",
    "ExportWorker",
    "ExportWorkerConfig",
    "Exporter",
    "OtlpExporter",
    "OtlpExporterConfig",
    "RemoteWriteConfig",
    "RemoteWriteExporter",
]

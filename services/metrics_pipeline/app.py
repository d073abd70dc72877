"""Composition root of metrics-pipeline: ``build(config)`` wires the data path and the API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from metrics_pipeline.pipeline import Pipeline
from metrics_pipeline.servicer import PipelineServicer
from phoenixcp.api.phoenix.v1 import pipeline_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


def build(config: ServiceConfig) -> ServiceApp:
    """The metrics-pipeline process for ``config``; nothing connects or binds until ``run``.

    Raises ConfigError when no exporter is configured.
    """
    binding = ServicerBinding(
        "phoenix.v1.PipelineService",
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        PipelineServicer(),
    )
    registry = CollectorRegistry()
    app: ServiceApp | None = None
    pipeline = Pipeline(config=config, registry=registry,
                        identity=lambda: app.tls_identity if app else None)
    app = ServiceApp(config=config, bindings=[binding], components=[pipeline],
                     registry=registry)
    return app

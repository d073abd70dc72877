"""Composition root of metrics-pipeline: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from metrics_pipeline.servicer import PipelineServicer
from phoenixcp.api.phoenix.v1 import pipeline_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


def build(config: ServiceConfig) -> ServiceApp:
    """The metrics-pipeline process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.PipelineService",
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        PipelineServicer(),
    )
    return ServiceApp(config=config, bindings=[binding])

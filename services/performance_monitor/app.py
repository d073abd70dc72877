"""Composition root of performance-monitor: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from performance_monitor.servicer import PerformanceMonitorServicer
from phoenixcp.api.phoenix.v1 import performance_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


def build(config: ServiceConfig) -> ServiceApp:
    """The performance-monitor process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.PerformanceMonitorService",
        performance_pb2_grpc.add_PerformanceMonitorServiceServicer_to_server,
        PerformanceMonitorServicer(),
    )
    return ServiceApp(config=config, bindings=[binding])

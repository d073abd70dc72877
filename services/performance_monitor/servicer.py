"""The gRPC servicer of performance-monitor (``phoenix.v1.PerformanceMonitorService``).

Every RPC of protos/phoenix/v1/performance.proto is served; those whose behaviour the
performance-monitor issue builds are inherited from the generated base and answer UNIMPLEMENTED
with the method's name.
"""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import performance_pb2_grpc

__all__ = ["PerformanceMonitorServicer"]


class PerformanceMonitorServicer(performance_pb2_grpc.PerformanceMonitorServiceServicer):
    """The performance-monitor API. Stateless for now; one instance per process."""

"""The gRPC servicer of metrics-pipeline (``phoenix.v1.PipelineService``).

Every RPC of protos/phoenix/v1/pipeline.proto is served; those whose behaviour metrics-pipeline
I and II (ingest, export, policies, profiles) builds are inherited from the generated base and
answer UNIMPLEMENTED with the method's name.
"""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import pipeline_pb2_grpc

__all__ = ["PipelineServicer"]


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    """The metrics-pipeline API. Stateless for now; one instance per process."""

"""The gRPC servicer of chaos-engineer (``phoenix.v1.ChaosEngineerService``).

Every RPC of protos/phoenix/v1/chaos.proto is served; those whose behaviour the chaos-engineer
issue builds are inherited from the generated base and answer UNIMPLEMENTED with the method's
name.
"""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import chaos_pb2_grpc

__all__ = ["ChaosEngineerServicer"]


class ChaosEngineerServicer(chaos_pb2_grpc.ChaosEngineerServiceServicer):
    """The chaos-engineer API. Stateless for now; one instance per process."""

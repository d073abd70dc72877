"""The gRPC servicer of cardinality-guard (``phoenix.v1.CardinalityGuardService``).

Every RPC of protos/phoenix/v1/cardinality.proto is served; those whose behaviour the
cardinality-guard issue builds are inherited from the generated base and answer UNIMPLEMENTED
with the method's name.
"""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import cardinality_pb2_grpc

__all__ = ["CardinalityGuardServicer"]


class CardinalityGuardServicer(cardinality_pb2_grpc.CardinalityGuardServiceServicer):
    """The cardinality-guard API. Stateless for now; one instance per process."""

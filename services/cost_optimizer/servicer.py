"""The gRPC servicer of cost-optimizer (``phoenix.v1.CostOptimizerService``).

Every RPC of protos/phoenix/v1/cost.proto is served; those whose behaviour the cost-optimizer
issue builds are inherited from the generated base and answer UNIMPLEMENTED with the method's
name.
"""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import cost_pb2_grpc

__all__ = ["CostOptimizerServicer"]


class CostOptimizerServicer(cost_pb2_grpc.CostOptimizerServiceServicer):
    """The cost-optimizer API. Stateless for now; one instance per process."""

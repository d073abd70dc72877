"""Composition root of cost-optimizer: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from cost_optimizer.servicer import CostOptimizerServicer
from phoenixcp.api.phoenix.v1 import cost_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["LEADER_ONLY_RPCS", "build"]

# Applying a recommendation is the control loop's work, which runs on the leader.
# Followers answer them with FAILED_PRECONDITION naming the leader.
LEADER_ONLY_RPCS = ("ApplyRecommendation",)


def build(config: ServiceConfig) -> ServiceApp:
    """The cost-optimizer process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.CostOptimizerService",
        cost_pb2_grpc.add_CostOptimizerServiceServicer_to_server,
        CostOptimizerServicer(),
        leader_only=frozenset(LEADER_ONLY_RPCS),
    )
    return ServiceApp(config=config, bindings=[binding])

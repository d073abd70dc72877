"""Composition root of cardinality-guard: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from cardinality_guard.servicer import CardinalityGuardServicer
from phoenixcp.api.phoenix.v1 import cardinality_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["LEADER_ONLY_RPCS", "build"]

# Remediation and alert dispatch run on the leader, so acknowledgements go there.
# Followers answer them with FAILED_PRECONDITION naming the leader.
LEADER_ONLY_RPCS = ("AcknowledgeExplosion",)


def build(config: ServiceConfig) -> ServiceApp:
    """The cardinality-guard process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.CardinalityGuardService",
        cardinality_pb2_grpc.add_CardinalityGuardServiceServicer_to_server,
        CardinalityGuardServicer(),
        leader_only=frozenset(LEADER_ONLY_RPCS),
    )
    return ServiceApp(config=config, bindings=[binding])

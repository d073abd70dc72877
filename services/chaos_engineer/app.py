"""Composition root of chaos-engineer: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from chaos_engineer.servicer import ChaosEngineerServicer
from phoenixcp.api.phoenix.v1 import chaos_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["LEADER_ONLY_RPCS", "build"]

# Experiments run on the leader only: it alone may start or abort one.
# Followers answer them with FAILED_PRECONDITION naming the leader.
LEADER_ONLY_RPCS = ("StartExperiment", "AbortExperiment")


def build(config: ServiceConfig) -> ServiceApp:
    """The chaos-engineer process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.ChaosEngineerService",
        chaos_pb2_grpc.add_ChaosEngineerServiceServicer_to_server,
        ChaosEngineerServicer(),
        leader_only=frozenset(LEADER_ONLY_RPCS),
    )
    return ServiceApp(config=config, bindings=[binding])

"""Composition root of cardinality-guard: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from cardinality_guard.servicer import CardinalityGuardServicer
from phoenixcp.api.phoenix.v1 import cardinality_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


def build(config: ServiceConfig) -> ServiceApp:
    """The cardinality-guard process for ``config``; nothing connects until ``run``."""
    binding = ServicerBinding(
        "phoenix.v1.CardinalityGuardService",
        cardinality_pb2_grpc.add_CardinalityGuardServiceServicer_to_server,
        CardinalityGuardServicer(),
    )
    return ServiceApp(config=config, bindings=[binding])

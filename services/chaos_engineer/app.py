"""Composition root of chaos-engineer: ``build(config)`` wires the adapters to the servicer."""

from __future__ import annotations

from chaos_engineer.servicer import ChaosEngineerServicer
from phoenixcp.api.phoenix.v1 import chaos_pb2_grpc
from phoenixcp.platform.config import ServiceConfig
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


def build(config: ServiceConfig) -> ServiceApp:
    """The chaos-engineer process for ``config``; nothing connects until ``run``."""
    return ServiceApp(
        config=config,
        bindings=[
            ServicerBinding(
                service_name="phoenix.v1.ChaosEngineerService",
                add_to_server=chaos_pb2_grpc.add_ChaosEngineerServiceServicer_to_server,
                servicer=ChaosEngineerServicer(),
            )
        ],
    )

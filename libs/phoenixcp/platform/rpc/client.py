"""Client side: mTLS channels to Phoenix services and the health check ``up``/``status`` use."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from phoenixcp.platform.rpc.credentials import channel_credentials
from phoenixcp.platform.tls import CertBundle

__all__ = ["health_status", "secure_channel"]


def secure_channel(address: str, bundle: CertBundle) -> grpc.aio.Channel:
    """An mTLS channel to ``address`` presenting ``bundle``'s certificate."""
    # Phoenix talks to its own replicas directly; an http_proxy from the environment would
    # only get in the way.
    return grpc.aio.secure_channel(address, channel_credentials(bundle),
                                   options=[("grpc.enable_http_proxy", 0)])


async def health_status(
    address: str, bundle: CertBundle, *, service: str = "", timeout: float = 2.0
) -> str:
    """``SERVING``, ``NOT_SERVING``, ``UNKNOWN``, ``SERVICE_UNKNOWN``, or ``UNREACHABLE``."""
    async with secure_channel(address, bundle) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

"""Building a Phoenix gRPC server: mTLS, health per service name, reflection, interceptors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from phoenixcp.platform.rpc.interceptors import RpcMetrics, StatusInterceptor

__all__ = ["GrpcServer", "ServicerBinding"]

_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServicerBinding:
    """One gRPC service a process serves: the generated ``add_*_to_server`` and its servicer."""

    service_name: str
    """Fully qualified, as health checks and reflection name it: ``phoenix.v1.PipelineService``."""
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object
    leader_only: frozenset[str] = frozenset()
    """RPC names (``StartExperiment``) that only the leader serves; followers name the leader."""

    @property
    def leader_only_methods(self) -> frozenset[str]:
        """The leader-only RPCs as full method paths, as interceptors see them."""
        return frozenset(f"/{self.service_name}/{name}" for name in self.leader_only)


class GrpcServer:
    """A started gRPC server whose health is NOT_SERVING until :meth:`set_serving`.

    ``start`` binds and returns the port; ``stop`` (idempotent) first reports NOT_SERVING, then
    lets in-flight calls finish within the grace period.
    """

    def __init__(
        self,
        *,
        bindings: Sequence[ServicerBinding],
        listen: str,
        credentials: grpc.ServerCredentials,
        metrics: RpcMetrics,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._bindings = tuple(bindings)
        self._listen = listen
        self._credentials = credentials
        self.health = HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[StatusInterceptor(metrics), *extra_interceptors],
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._stopped = False
        self.port: int | None = None

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(b.service_name for b in self._bindings)

    async def start(self) -> int:
        for binding in self._bindings:
            binding.add_to_server(binding.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server,
        )
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_secure_port(self._listen, self._credentials)
        if not self.port:
            raise OSError(f"cannot listen on {self._listen} for gRPC")
        await self._server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._set_all(status)

    async def _set_all(self, status: int) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

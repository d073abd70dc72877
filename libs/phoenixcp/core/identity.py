"""Who is who in Phoenix: the five services, their packages, gRPC services and SPIFFE IDs."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OPERATOR", "SERVICES", "ServiceIdentity", "service", "spiffe_id"]

SPIFFE_TRUST_DOMAIN = "phoenix"


def spiffe_id(name: str) -> str:
    """The SPIFFE ID in the URI SAN of the certificate of ``name`` (a service or ``operator``)."""
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/{name}"


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """One Phoenix service: its name as users see it, its Python package and its gRPC service."""

    name: str
    """As DESIGN.md spells it: ``metrics-pipeline``; used in etcd keys, logs and endpoints.json."""
    package: str
    """The import name of the service's package under ``services/``: ``metrics_pipeline``."""
    grpc_service: str
    """The fully qualified gRPC service from protos/phoenix/v1: ``phoenix.v1.PipelineService``."""
    elects_leader: bool = True
    """Whether its replicas elect a leader; metrics-pipeline's replicas are all equal."""

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.name)


SERVICES: tuple[ServiceIdentity, ...] = (
    ServiceIdentity(
        "metrics-pipeline", "metrics_pipeline", "phoenix.v1.PipelineService", elects_leader=False
    ),
    ServiceIdentity(
        "cardinality-guard", "cardinality_guard", "phoenix.v1.CardinalityGuardService"
    ),
    ServiceIdentity("cost-optimizer", "cost_optimizer", "phoenix.v1.CostOptimizerService"),
    ServiceIdentity(
        "performance-monitor", "performance_monitor", "phoenix.v1.PerformanceMonitorService"
    ),
    ServiceIdentity("chaos-engineer", "chaos_engineer", "phoenix.v1.ChaosEngineerService"),
)

OPERATOR = "operator"
"""The identity of people and tools (``phoenixctl``) that call the services' APIs."""

_BY_NAME = {s.name: s for s in SERVICES}


def service(name: str) -> ServiceIdentity:
    """The service called ``name``; raises ``KeyError`` naming the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        allowed = ", ".join(_BY_NAME)
        raise KeyError(f"unknown service {name!r}; the services are: {allowed}") from None

"""Composition root of metrics-pipeline: ``build(config)`` wires the data path and the API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from metrics_pipeline.native import report_native_parts
from metrics_pipeline.pipeline import Pipeline
from metrics_pipeline.servicer import PipelineServicer
from metrics_pipeline.stats import ReplicaCounters
from phoenixcp.api.phoenix.v1 import common_pb2, pipeline_pb2_grpc
from phoenixcp.platform.bus import EventPublisher
from phoenixcp.platform.config import ServiceConfig, dialable_host, parse_host_port
from phoenixcp.platform.coord.ports import ReplicatedState
from phoenixcp.platform.rpc import ServicerBinding
from phoenixcp.platform.service import ServiceApp

__all__ = ["build"]


class _Replica:
    """The servicer's view of the running replica; it resolves everything per call, because
    the gRPC port is bound and the cluster joined only once ``run`` has started."""

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config
        self.app: ServiceApp | None = None

    def identity(self) -> common_pb2.ReplicaIdentity:
        port = self.app.grpc_port if self.app is not None else None
        host = dialable_host(parse_host_port(self._config.grpc.listen)[0])
        return common_pb2.ReplicaIdentity(
            service=common_pb2.SERVICE_NAME_METRICS_PIPELINE,
            replica_id=self._config.replica_id, address=f"{host}:{port}" if port else "")

    def replica_count(self) -> int:
        cluster = self.app.cluster if self.app is not None else None
        members = cluster.members if cluster is not None else None
        return members.count if members is not None else 0

    def state(self) -> ReplicatedState | None:
        cluster = self.app.cluster if self.app is not None else None
        return cluster.store if cluster is not None else None

    def events(self) -> EventPublisher | None:
        cluster = self.app.cluster if self.app is not None else None
        return cluster.bus if cluster is not None else None


def build(config: ServiceConfig) -> ServiceApp:
    """The metrics-pipeline process for ``config``; nothing connects or binds until ``run``.

    Raises ConfigError when no exporter is configured.
    """
    registry = CollectorRegistry()
    report_native_parts(registry)
    replica = _Replica(config)
    app: ServiceApp | None = None
    pipeline = Pipeline(config=config, registry=registry,
                        identity=lambda: app.tls_identity if app else None)
    servicer = PipelineServicer(
        engine=pipeline.engine, replica=replica,
        counters=ReplicaCounters(registry=registry, exporters=config.pipeline.exporters),
        window_interval=config.pipeline.window_interval)
    binding = ServicerBinding("phoenix.v1.PipelineService",
                              pipeline_pb2_grpc.add_PipelineServiceServicer_to_server, servicer)
    app = ServiceApp(config=config, bindings=[binding], components=[pipeline],
                     registry=registry)
    replica.app = app
    return app

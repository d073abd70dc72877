"""The data path of one metrics-pipeline replica: receivers → durable queues → exporters.

Every replica serves traffic; none waits on the control plane. A batch is accepted once it is
durably queued for every exporter; the export workers then deliver it at least once.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from metrics_pipeline.forwarding import Forwarder
from metrics_pipeline.ingest_http import HttpIngest
from metrics_pipeline.ingest_metrics import IngestMetrics
from metrics_pipeline.ingest_otlp import OtlpIngest
from metrics_pipeline.policy_follow import PolicyFollower, static_policies
from metrics_pipeline.policy_stage import PolicyStage
from metrics_pipeline.profile_feeds import ProfileFeeds
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.policy.engine import PolicyEngine
from phoenixcp.errors import ConfigError
from phoenixcp.platform.cluster import ClusterMember
from phoenixcp.platform.config import ServiceConfig, dialable_host, parse_host_port
from phoenixcp.platform.rpc import RotatingIdentity

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """Receivers, queues and exporters as one service component (``start``/``shutdown``)."""

    def __init__(self, *, config: ServiceConfig, registry: CollectorRegistry,
                 identity: Callable[[], RotatingIdentity | None]) -> None:
        pipeline = config.pipeline
        if not pipeline.exporters:
            raise ConfigError(
                "pipeline.exporters is empty: metrics-pipeline needs at least one backend to "
                "forward to (type remote-write or otlp); it never accepts data it cannot send")
        self._config = pipeline
        self._identity = identity
        data_dir = pipeline.data_dir or config.state_dir / "pipeline" / config.replica_id
        self._metrics = IngestMetrics(registry)
        self._forwarder = Forwarder(config=pipeline, data_dir=Path(data_dir), registry=registry)
        self.engine = PolicyEngine(replica_id=config.replica_id,
                                   default_flush=pipeline.merge_flush_interval)
        self._static = static_policies(pipeline.static_policies)
        feeds = ProfileFeeds(replica_id=config.replica_id, exporters=self._forwarder.names,
                             default_flush=pipeline.merge_flush_interval)
        self.stage = PolicyStage(engine=self.engine, forwarder=self._forwarder,
                                 registry=registry, feeds=feeds,
                                 flush_check=pipeline.policy_flush_check.total_seconds())
        self._policies = PolicyFollower(engine=self.engine, stage=self.stage,
                                        static=self._static, registry=registry,
                                        window_interval=pipeline.window_interval)
        self._http: HttpIngest | None = None
        self._otlp: OtlpIngest | None = None
        self._grace = config.grpc.drain_grace.total_seconds()

    async def accept(self, batch: MetricBatch) -> None:
        await self.stage.accept(batch)

    async def start(self) -> None:
        await self._forwarder.start()
        self._policies.apply_static()
        await self.stage.start()
        host, port = parse_host_port(self._config.http_listen)
        self._http = HttpIngest(host=host, port=port, max_bytes=self._config.max_request_bytes,
                                accept=self.accept, metrics=self._metrics,
                                ssl_context=self._ssl_context())
        await self._http.start()
        self._otlp = OtlpIngest(listen=self._config.otlp_grpc_listen, accept=self.accept,
                                metrics=self._metrics, credentials=self._grpc_credentials(),
                                max_bytes=self._config.max_request_bytes)
        await self._otlp.start()
        log.info("ingest listening", extra={"fields": self.endpoints()})

    def endpoints(self) -> dict[str, str]:
        if self._http is None or self._otlp is None:
            return {}
        scheme = "http" if self._config.ingest_tls == "off" else "https"
        http_host = dialable_host(parse_host_port(self._config.http_listen)[0])
        grpc_host = dialable_host(parse_host_port(self._config.otlp_grpc_listen)[0])
        base = f"{scheme}://{http_host}:{self._http.bound_port}"
        return {"otlp_grpc": f"{grpc_host}:{self._otlp.bound_port}",
                "otlp_http": f"{base}/v1/metrics", "remote_write": f"{base}/api/v1/write"}

    async def cluster_ready(self, cluster: ClusterMember) -> None:
        """Follow policies and profiles in etcd, and publish window reports on NATS."""
        await self._policies.follow(cluster)

    async def shutdown(self) -> None:
        """Stop receiving (open requests finish), queue merged output, then flush exporters
        for the drain grace."""
        if self._otlp is not None:
            await self._otlp.shutdown(self._grace)
        if self._http is not None:
            await self._http.shutdown(self._grace)
        await self._policies.shutdown()
        await self.stage.shutdown(self._grace)
        await self._forwarder.shutdown(self._grace)

    def _grpc_credentials(self) -> grpc.ServerCredentials | None:
        identity = self._identity() if self._config.ingest_tls != "off" else None
        if identity is None:
            return None
        bundle = identity.bundle
        return grpc.ssl_server_credentials(
            [(bundle.key_pem, bundle.cert_pem)], root_certificates=bundle.ca_pem,
            require_client_auth=self._config.ingest_tls == "mtls")

    def _ssl_context(self) -> ssl.SSLContext | None:
        identity = self._identity() if self._config.ingest_tls != "off" else None
        if identity is None:
            return None
        return identity.server_ssl_context(require_client_cert=self._config.ingest_tls == "mtls")

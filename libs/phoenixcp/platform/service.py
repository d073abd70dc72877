"""The process around every Phoenix service: certificates, gRPC, /metrics, readiness, cluster.

:class:`ServiceApp` is what a service package's ``build(config)`` returns. Its life:

1. take this replica's certificate (local CA, files or Vault) and renew it at two thirds of
   its life, without a restart (:class:`CertificateRenewer`);
2. serve ``/metrics`` and the gRPC API (mTLS, SPIFFE authorisation, leader-only gate) with
   health NOT_SERVING;
3. wait until every dependency probe answers (NATS, etcd, and Vault when configured);
4. join the cluster (:class:`ClusterMember`: etcd state, NATS events, leader election and the
   service's leader-only components), report SERVING and write the announce file;
5. on :meth:`request_stop`: NOT_SERVING, resign leadership (another replica takes over at
   once), let in-flight calls finish within ``grpc.drain_grace``, flush events, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Gauge, Info, ProcessCollector

from phoenixcp import __version__
from phoenixcp.api.phoenix.v1 import events_pb2, replica_pb2_grpc
from phoenixcp.core.acl import default_acl
from phoenixcp.core.identity import service as service_identity
from phoenixcp.errors import NotLeader, Unavailable
from phoenixcp.platform.cluster import ClusterMember
from phoenixcp.platform.config import ServiceConfig, dialable_host, parse_host_port
from phoenixcp.platform.coord import LeaderOnly
from phoenixcp.platform.idle_work import IdleGateMetrics
from phoenixcp.platform.metrics_http import MetricsServer
from phoenixcp.platform.probes import DependencyProbe, EtcdProbe, NatsProbe
from phoenixcp.platform.replica import REPLICA_SERVICE, ReplicaServicer
from phoenixcp.platform.rpc import (
    GrpcServer,
    LeaderGateInterceptor,
    RotatingIdentity,
    RpcMetrics,
    ServicerBinding,
)
from phoenixcp.platform.rpc.authz import AuthorizationInterceptor
from phoenixcp.platform.secrets import (
    CertificateRenewer,
    VaultCertificates,
    VaultClient,
    VaultProbe,
)
from phoenixcp.platform.tls import CertBundle, CertificateSource, FileCertificates, LocalCA

__all__ = ["ClusterAware", "Component", "ServiceApp", "certificate_source", "default_probes"]

log = logging.getLogger(__name__)

_ISSUERS = {"local-ca": events_pb2.CERT_ISSUER_LOCAL_CA, "vault": events_pb2.CERT_ISSUER_VAULT,
            "files": events_pb2.CERT_ISSUER_UNSPECIFIED}


def certificate_source(config: ServiceConfig) -> CertificateSource:
    """The source ``config.tls`` names."""
    tls = config.tls
    if tls.source == "files":
        assert tls.ca_file and tls.cert_file and tls.key_file  # checked by TLSConfig
        return FileCertificates(ca_file=tls.ca_file, cert_file=tls.cert_file,
                                key_file=tls.key_file)
    if tls.source == "vault":
        assert config.vault is not None  # checked by ServiceConfig
        return VaultCertificates(client=VaultClient(config.vault))
    return LocalCA.open(config.ca_dir, create=False)


def default_probes(config: ServiceConfig) -> list[DependencyProbe]:
    """NATS and etcd, which every Phoenix service coordinates through; Vault when it is used."""
    probes: list[DependencyProbe] = [
        NatsProbe(url=config.nats.url, timeout=config.nats.connect_timeout.total_seconds()),
        EtcdProbe(endpoints=config.etcd.endpoints,
                  timeout=config.etcd.dial_timeout.total_seconds()),
    ]
    if config.tls.source == "vault" and config.vault is not None:
        probes.append(VaultProbe(client=VaultClient(config.vault)))
    return probes


class Component(Protocol):
    """Long-lived work a service runs beside its API, such as the pipeline's data path.

    Components start before the dependency wait (the data path never waits on the control
    plane) and stop after the gRPC drain, in reverse order; ``shutdown`` is idempotent.
    """

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def endpoints(self) -> dict[str, str]:
        """Addresses this component serves, for the announce file (``{}`` when none)."""
        ...


@runtime_checkable
class ClusterAware(Protocol):
    """A component that also follows the cluster (etcd state, NATS) once it is connected.

    ``cluster_ready`` is called once, after the component started and the replica joined the
    cluster; it must not block (spawn what runs long) and is never called in standalone mode.
    """

    async def cluster_ready(self, cluster: ClusterMember) -> None: ...


class ServiceApp:
    """One running service replica. ``run`` until ``request_stop``; ``shutdown`` is idempotent.

    ``standalone=True`` serves the API without probes or cluster membership (no NATS, etcd or
    election); tests of a servicer use it.
    """

    def __init__(
        self,
        *,
        config: ServiceConfig,
        bindings: Sequence[ServicerBinding],
        leader_only: Sequence[LeaderOnly] = (),
        components: Sequence[Component] = (),
        probes: Sequence[DependencyProbe] | None = None,
        registry: CollectorRegistry | None = None,
        standalone: bool = False,
    ) -> None:
        self.config = config
        self.identity = service_identity(config.service)
        self.registry = registry or CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds...:
        # what a memory or CPU budget is checked against (ADR 0012).
        ProcessCollector(registry=self.registry)
        self._idle_work = IdleGateMetrics(self.registry)
        self._bindings = tuple(bindings)
        self._components = tuple(components)
        self._started: list[Component] = []
        if probes is None:
            probes = [] if standalone else default_probes(config)
        self._probes = list(probes)
        self.cluster: ClusterMember | None = None if standalone else ClusterMember(
            config=config, identity=self.identity, address=self._grpc_address,
            registry=self.registry, leader_only=leader_only)
        self._stop = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: GrpcServer | None = None
        self._metrics: MetricsServer | None = None
        self._renewer: CertificateRenewer | None = None
        self._bundle: CertBundle | None = None
        self.tls_identity: RotatingIdentity | None = None
        """This replica's certificate once ``run`` has taken it; components may serve with it."""
        self._shutdown_done = False
        self._define_metrics()

    def _define_metrics(self) -> None:
        labels = {"service": self.config.service, "replica": self.config.replica_id}
        Info("phoenix_build", "Phoenix version of this process.", registry=self.registry).info(
            {"version": __version__, **labels}
        )
        self._ready_gauge = Gauge("phoenix_ready", "1 once the service reports SERVING.",
                                  registry=self.registry)
        self._dependency_up = Gauge("phoenix_dependency_up",
                                    "1 when the dependency answered its last probe.",
                                    ["dependency"], registry=self.registry)
        self._cert_expiry = Gauge("phoenix_cert_expiry_timestamp_seconds",
                                  "Unix time when this replica's certificate expires.",
                                  registry=self.registry)
        self._rpc_metrics = RpcMetrics(self.registry)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def grpc_port(self) -> int | None:
        return self._grpc.port if self._grpc else None

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.bound_port if self._metrics else None

    def request_stop(self) -> None:
        """Ask ``run`` to drain and return. Safe to call from a signal handler, repeatedly."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`request_stop`, then drain. Raises if start-up fails."""
        try:
            await self._start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def _start(self) -> None:
        self._idle_work.bind(asyncio.get_running_loop())
        config = self.config
        source = certificate_source(config)
        self._bundle = await asyncio.to_thread(source.issue, config.service,
                                               ttl=config.tls.cert_ttl)
        identity = RotatingIdentity(self._bundle)
        self.tls_identity = identity
        self._cert_expiry.set(self._bundle.not_after.timestamp())
        self._renewer = CertificateRenewer(source=source, identity=identity, name=config.service,
                                           ttl=config.tls.cert_ttl, on_renewed=self._renewed)

        host, port = parse_host_port(config.metrics.listen)
        self._metrics = MetricsServer(registry=self.registry, host=host, port=port,
                                      ready=lambda: self._ready)
        await self._metrics.start()
        self._grpc = self._build_grpc(identity)
        await self._grpc.start()
        log.info("listening", extra={"fields": {
            "grpc": self._grpc_address(), "metrics_port": self._metrics.bound_port}})
        self._spawn(self._renewer.run())
        for component in self._components:
            await component.start()
            self._started.append(component)

        await self._wait_for_dependencies()
        if self.cluster is not None and not self._stop.is_set():
            await self._first(self.cluster.start())
            for component in self._started:
                if isinstance(component, ClusterAware) and not self._stop.is_set():
                    await component.cluster_ready(self.cluster)
        if self._stop.is_set():
            return
        await self._grpc.set_serving(True)
        self._ready = True
        self._ready_gauge.set(1)
        self._announce()
        log.info("serving", extra={"fields": {"services": list(self._grpc.service_names)}})
        self._spawn(self._watch_dependencies())

    def _build_grpc(self, identity: RotatingIdentity) -> GrpcServer:
        replica = ReplicaServicer(
            identity=self.identity, replica_id=self.config.replica_id,
            address=self._grpc_address, leadership=self._leadership,
        )
        bindings = (*self._bindings, ServicerBinding(
            REPLICA_SERVICE, replica_pb2_grpc.add_ReplicaServiceServicer_to_server, replica))
        leader_only = frozenset().union(*(b.leader_only_methods for b in bindings))
        return GrpcServer(
            bindings=bindings,
            listen=self.config.grpc.listen,
            credentials=identity.server_credentials(),
            metrics=self._rpc_metrics,
            extra_interceptors=[
                AuthorizationInterceptor(default_acl(), registry=self.registry),
                LeaderGateInterceptor(methods=leader_only, require_leader=self._require_leader),
            ],
        )

    def _leadership(self) -> tuple[bool, object | None]:
        return self.cluster.leadership() if self.cluster else (False, None)

    def _require_leader(self) -> None:
        if self.cluster is None:
            raise NotLeader(f"{self.config.service} runs standalone: no replica leads")
        self.cluster.require_leader()

    def _renewed(self, bundle: CertBundle) -> None:
        previous, self._bundle = self._bundle, bundle
        self._cert_expiry.set(bundle.not_after.timestamp())
        if self.cluster is not None:
            self.cluster.certificate_renewed(bundle, previous, _ISSUERS[self.config.tls.source])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _first(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` unless a stop is requested first (then cancel it)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()

    async def _probe_all(self) -> list[str]:
        failures: list[str] = []
        for probe in self._probes:
            try:
                await probe.check()
                self._dependency_up.labels(probe.name).set(1)
            except Unavailable as exc:
                self._dependency_up.labels(probe.name).set(0)
                failures.append(str(exc))
        return failures

    async def _wait_for_dependencies(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            failures = await self._probe_all()
            if not failures:
                return
            log.warning("waiting for dependencies", extra={"fields": {"failures": failures}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, self.config.readiness.probe_interval.total_seconds())

    async def _watch_dependencies(self) -> None:
        # After start, a dependency outage is reported (metric, log) but does not flip health:
        # the data path keeps working without the control plane, and so should traffic.
        interval = self.config.readiness.probe_interval.total_seconds()
        healthy = True
        while True:
            await asyncio.sleep(interval)
            failures = await self._probe_all()
            if failures and healthy:
                log.warning("dependency unavailable", extra={"fields": {"failures": failures}})
            elif not failures and not healthy:
                log.info("dependencies answer again")
            healthy = not failures

    def _grpc_address(self) -> str:
        host, _ = parse_host_port(self.config.grpc.listen)
        return f"{dialable_host(host)}:{self.grpc_port}"

    def _announce(self) -> None:
        path = self.config.announce_file
        if path is None or self._grpc is None or self._metrics is None:
            return
        mhost, _ = parse_host_port(self.config.metrics.listen)
        record: dict[str, object] = {
            "service": self.config.service,
            "replica": self.config.replica_id,
            "grpc": self._grpc_address(),
            "metrics": f"http://{dialable_host(mhost)}:{self._metrics.bound_port}/metrics",
            "pid": os.getpid(),
        }
        ingest: dict[str, str] = {}
        for component in self._started:
            ingest.update(component.endpoints())
        if ingest:
            record["ingest"] = ingest
        _write_json_atomic(path, record)

    async def shutdown(self) -> None:
        """Drain and stop everything this app started, in reverse order. Idempotent."""
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._ready = False
        self._ready_gauge.set(0)
        if self._grpc is not None:
            await self._grpc.set_serving(False)
        if self.cluster is not None:
            await self.cluster.resign()  # hand over first: a drain may take drain_grace
        if self._grpc is not None:
            log.info("draining", extra={"fields": {
                "grace_seconds": self.config.grpc.drain_grace.total_seconds()}})
            await self._grpc.stop(self.config.grpc.drain_grace.total_seconds())
        for component in reversed(self._started):
            await component.shutdown()
        if self._renewer is not None:
            self._renewer.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.shutdown()
        if self._metrics is not None:
            await self._metrics.shutdown()
        if self.config.announce_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.announce_file.unlink()
        log.info("stopped")


def _write_json_atomic(path: Path, record: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)

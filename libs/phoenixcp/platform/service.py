"""The process around every Phoenix service: certificates, gRPC, /metrics, readiness, drain.

:class:`ServiceApp` is what a service package's ``build(config)`` returns. Its life:

1. take this replica's certificate (local CA or files) and renew it at two thirds of its life;
2. serve ``/metrics`` and the gRPC API with health NOT_SERVING;
3. wait until every dependency probe answers, then report SERVING and write the announce file;
4. on :meth:`request_stop`, drain: health NOT_SERVING, let in-flight calls finish within
   ``grpc.drain_grace``, stop the rest. :meth:`shutdown` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Info

from phoenixcp import __version__
from phoenixcp.api.phoenix.v1 import replica_pb2_grpc
from phoenixcp.core.identity import service as service_identity
from phoenixcp.errors import Unavailable
from phoenixcp.platform.config import ServiceConfig, parse_host_port
from phoenixcp.platform.metrics_http import MetricsServer
from phoenixcp.platform.probes import DependencyProbe, EtcdProbe, NatsProbe
from phoenixcp.platform.replica import REPLICA_SERVICE, ReplicaServicer
from phoenixcp.platform.rpc import GrpcServer, RotatingIdentity, RpcMetrics, ServicerBinding
from phoenixcp.platform.tls import CertificateSource, FileCertificates, LocalCA

__all__ = ["ServiceApp", "certificate_source", "default_probes"]

log = logging.getLogger(__name__)

_RENEW_AT = 2 / 3  # of a certificate's lifetime


def certificate_source(config: ServiceConfig) -> CertificateSource:
    """The source ``config.tls`` names."""
    tls = config.tls
    if tls.source == "files":
        assert tls.ca_file and tls.cert_file and tls.key_file  # checked by TLSConfig
        return FileCertificates(ca_file=tls.ca_file, cert_file=tls.cert_file,
                                key_file=tls.key_file)
    return LocalCA.open(config.ca_dir, create=False)


def default_probes(config: ServiceConfig) -> list[DependencyProbe]:
    """NATS and etcd: every Phoenix service coordinates through both."""
    return [
        NatsProbe(url=config.nats.url, timeout=config.nats.connect_timeout.total_seconds()),
        EtcdProbe(endpoints=config.etcd.endpoints,
                  timeout=config.etcd.dial_timeout.total_seconds()),
    ]


class ServiceApp:
    """One running service replica. ``run`` until ``request_stop``; ``shutdown`` is idempotent."""

    def __init__(
        self,
        *,
        config: ServiceConfig,
        bindings: Sequence[ServicerBinding],
        probes: Sequence[DependencyProbe] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self._bindings = tuple(bindings)
        self._probes = list(default_probes(config) if probes is None else probes)
        self._stop = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: GrpcServer | None = None
        self._metrics: MetricsServer | None = None
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
        config = self.config
        source = certificate_source(config)
        identity = RotatingIdentity(source.issue(config.service, ttl=config.tls.cert_ttl))
        self._cert_expiry.set(identity.bundle.not_after.timestamp())

        host, port = parse_host_port(config.metrics.listen)
        self._metrics = MetricsServer(registry=self.registry, host=host, port=port,
                                      ready=lambda: self._ready)
        await self._metrics.start()
        replica = ReplicaServicer(
            identity=service_identity(config.service),
            replica_id=config.replica_id,
            address=self._grpc_address,
        )
        self._grpc = GrpcServer(
            bindings=(*self._bindings, ServicerBinding(
                REPLICA_SERVICE, replica_pb2_grpc.add_ReplicaServiceServicer_to_server, replica)),
            listen=config.grpc.listen,
            credentials=identity.server_credentials(),
            metrics=self._rpc_metrics,
        )
        await self._grpc.start()
        log.info("listening", extra={"fields": {
            "grpc": self._grpc_address(), "metrics_port": self._metrics.bound_port}})
        self._spawn(self._renew_certificates(source, identity))

        await self._wait_for_dependencies()
        if self._stop.is_set():
            return
        await self._grpc.set_serving(True)
        self._ready = True
        self._ready_gauge.set(1)
        self._announce()
        log.info("serving", extra={"fields": {"services": list(self._grpc.service_names)}})
        self._spawn(self._watch_dependencies())

    def _spawn(self, coro: object) -> None:
        self._tasks.append(asyncio.create_task(coro))  # type: ignore[arg-type]

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

    async def _renew_certificates(
        self, source: CertificateSource, identity: RotatingIdentity
    ) -> None:
        while True:
            bundle = identity.bundle
            now = dt.datetime.now(dt.UTC)
            lifetime = bundle.not_after - bundle.certificate.not_valid_before_utc
            renew_at = bundle.certificate.not_valid_before_utc + lifetime * _RENEW_AT
            await asyncio.sleep(max((renew_at - now).total_seconds(), 1.0))
            try:
                fresh = source.issue(self.config.service, ttl=self.config.tls.cert_ttl)
            except Exception:
                log.exception("certificate renewal failed; retrying in 30s")
                await asyncio.sleep(30)
                continue
            identity.update(fresh)
            self._cert_expiry.set(fresh.not_after.timestamp())
            log.info("certificate renewed", extra={"fields": {
                "not_after": fresh.not_after.isoformat()}})

    def _grpc_address(self) -> str:
        host, _ = parse_host_port(self.config.grpc.listen)
        return f"{_dialable(host)}:{self.grpc_port}"

    def _announce(self) -> None:
        path = self.config.announce_file
        if path is None or self._grpc is None or self._metrics is None:
            return
        mhost, _ = parse_host_port(self.config.metrics.listen)
        record = {
            "service": self.config.service,
            "replica": self.config.replica_id,
            "grpc": self._grpc_address(),
            "metrics": f"http://{_dialable(mhost)}:{self._metrics.bound_port}/metrics",
            "pid": os.getpid(),
        }
        _write_json_atomic(path, record)

    async def shutdown(self) -> None:
        """Drain and stop everything this app started, in reverse order. Idempotent."""
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._ready = False
        self._ready_gauge.set(0)
        if self._grpc is not None:
            log.info("draining", extra={"fields": {
                "grace_seconds": self.config.grpc.drain_grace.total_seconds()}})
            await self._grpc.stop(self.config.grpc.drain_grace.total_seconds())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics is not None:
            await self._metrics.shutdown()
        if self.config.announce_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.announce_file.unlink()
        log.info("stopped")


def _dialable(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _write_json_atomic(path: Path, record: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)

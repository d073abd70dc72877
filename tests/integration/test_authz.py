"""Authorisation over real mTLS: certificates from the local CA and from OpenBao.

An in-process gRPC server serves PipelineService and CardinalityGuardService (whose RPCs answer
UNIMPLEMENTED: an UNIMPLEMENTED answer proves the call got past authorisation) behind the
AuthorizationInterceptor with Phoenix's default ACL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from cardinality_guard.servicer import CardinalityGuardServicer
from phoenixcp.api.phoenix.v1 import (
    cardinality_pb2,
    cardinality_pb2_grpc,
    common_pb2,
    pipeline_pb2,
    pipeline_pb2_grpc,
)
from phoenixcp.core.acl import Acl, default_acl
from phoenixcp.core.identity import OPERATOR, SERVICES, spiffe_id
from phoenixcp.platform.embedded import EmbeddedBao
from phoenixcp.platform.rpc import GrpcServer, RotatingIdentity, RpcMetrics, ServicerBinding
from phoenixcp.platform.rpc.authz import AuthorizationInterceptor
from phoenixcp.platform.rpc.client import secure_channel
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY
from phoenixcp.platform.secrets import VaultCertificates, VaultClient, VaultConfig, ensure_pki
from phoenixcp.platform.tls import CertBundle, LocalCA

pytestmark = pytest.mark.integration

Issue = Callable[[str], CertBundle]
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module", params=["local-ca", "vault"])
def issue(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Issue:
    """Issues a certificate for a name, from the local CA or from OpenBao."""
    if request.param == "local-ca":
        ca = LocalCA.open(tmp_path_factory.mktemp("authz") / "ca")
        return lambda name: ca.issue(name, ttl=HOUR)
    bao: EmbeddedBao = request.getfixturevalue("bao_server")
    client = VaultClient(VaultConfig(addr=bao.addr, token=bao.root_token))
    ensure_pki(client, services=[s.name for s in SERVICES], max_ttl=HOUR)
    source = VaultCertificates(client=client)
    return lambda name: source.issue(name, ttl=HOUR)


async def start_server(
    server_bundle: CertBundle, acl: Acl, registry: CollectorRegistry
) -> GrpcServer:
    server = GrpcServer(
        bindings=[
            ServicerBinding("phoenix.v1.PipelineService",
                            pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
                            pipeline_pb2_grpc.PipelineServiceServicer()),
            ServicerBinding("phoenix.v1.CardinalityGuardService",
                            cardinality_pb2_grpc.add_CardinalityGuardServiceServicer_to_server,
                            CardinalityGuardServicer()),  # type: ignore[abstract]
        ],
        listen="127.0.0.1:0",
        credentials=RotatingIdentity(server_bundle).server_credentials(),
        metrics=RpcMetrics(CollectorRegistry()),
        extra_interceptors=[AuthorizationInterceptor(acl, registry=registry)],
    )
    await server.start()
    await server.set_serving(True)
    return server


@pytest.fixture
async def served(issue: Issue) -> AsyncIterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = await start_server(issue("metrics-pipeline"), default_acl(), registry)
    try:
        yield f"127.0.0.1:{server.port}", registry
    finally:
        await server.stop(0)


async def apply_policy(address: str, bundle: CertBundle) -> grpc.aio.AioRpcError:
    async with secure_channel(address, bundle) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pipeline_pb2_grpc.PipelineServiceStub(channel).ApplyPolicy(
                pipeline_pb2.ApplyPolicyRequest(), timeout=5)
    return caught.value


def denied_count(registry: CollectorRegistry, method: str, peer: str) -> float:
    service, name = method.lstrip("/").split("/")
    value = registry.get_sample_value("phoenix_grpc_server_denied_total", {
        "grpc_service": service, "grpc_method": name, "peer": peer})
    return value or 0.0


async def test_operator_gets_past_authorisation(
    served: tuple[str, CollectorRegistry], issue: Issue
) -> None:
    address, _ = served
    error = await apply_policy(address, issue(OPERATOR))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error.details()


async def test_chaos_engineer_may_not_apply_a_policy(
    served: tuple[str, CollectorRegistry], issue: Issue
) -> None:
    address, registry = served
    method = "/phoenix.v1.PipelineService/ApplyPolicy"
    error = await apply_policy(address, issue("chaos-engineer"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        f"spiffe://phoenix/chaos-engineer may not call {method}; "
        "allowed: spiffe://phoenix/operator"
    )
    trailers = dict(error.trailing_metadata() or ())
    detail = common_pb2.ErrorDetail.FromString(trailers[ERROR_DETAIL_KEY])
    assert detail.reason == common_pb2.ERROR_REASON_PERMISSION_DENIED
    assert denied_count(registry, method, spiffe_id("chaos-engineer")) == 1


async def test_chaos_engineer_may_read_stats_health_and_watch_explosions(
    served: tuple[str, CollectorRegistry], issue: Issue
) -> None:
    address, _ = served
    async with secure_channel(address, issue("chaos-engineer")) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pipeline_pb2_grpc.PipelineServiceStub(channel).GetStats(
                pipeline_pb2.GetStatsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stream = cardinality_pb2_grpc.CardinalityGuardServiceStub(channel).WatchExplosions(
            cardinality_pb2.WatchExplosionsRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_server_streaming_rpc_is_refused_before_it_starts(
    served: tuple[str, CollectorRegistry], issue: Issue
) -> None:
    address, registry = served
    method = "/phoenix.v1.CardinalityGuardService/WatchExplosions"
    async with secure_channel(address, issue("metrics-pipeline")) as channel:
        stream = cardinality_pb2_grpc.CardinalityGuardServiceStub(channel).WatchExplosions(
            cardinality_pb2.WatchExplosionsRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (caught.value.details() or "").startswith(
        f"spiffe://phoenix/metrics-pipeline may not call {method}; allowed: ")
    assert denied_count(registry, method, spiffe_id("metrics-pipeline")) == 1


async def test_bidirectional_stream_refused_by_a_stricter_acl(issue: Issue) -> None:
    registry = CollectorRegistry()
    operator_only = Acl(rules={"*": [spiffe_id(OPERATOR)]})
    server = await start_server(issue("metrics-pipeline"), operator_only, registry)
    address = f"127.0.0.1:{server.port}"
    try:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async with secure_channel(address, issue("cost-optimizer")) as channel:
            # No request is written: the refusal comes at the call's start, and a write racing
            # it made grpc's client report INTERNAL ("Failed execute_batch") instead.
            denied = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                timeout=5)
            assert await denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "ServerReflectionInfo" in (await denied.details() or "")
        async with secure_channel(address, issue(OPERATOR)) as channel:
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([request]), timeout=5)
            names = [s.name async for r in call for s in r.list_services_response.service]
            assert "phoenix.v1.PipelineService" in names
    finally:
        await server.stop(0)


def _certificate_without_spiffe_id(ca_dir: Path) -> CertBundle:
    """Signed by the local CA (so the handshake succeeds) but with no URI SAN at all."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + HOUR)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca_pem=(ca_dir / "ca.pem").read_bytes(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


async def test_certificate_without_spiffe_id_is_refused_even_health(tmp_path: Path) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    registry = CollectorRegistry()
    server = await start_server(ca.issue("metrics-pipeline", ttl=HOUR), default_acl(), registry)
    try:
        async with secure_channel(f"127.0.0.1:{server.port}",
                                  _certificate_without_spiffe_id(tmp_path / "ca")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (caught.value.details() or "").startswith(
            "a caller whose certificate has no SPIFFE ID may not call "
            "/grpc.health.v1.Health/Check")
        assert denied_count(registry, "/grpc.health.v1.Health/Check", "none") == 1
    finally:
        await server.stop(0)

"""OpenBao's PKI engine as Phoenix's CA: idempotent setup, certificate shape, mTLS with it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from phoenixcp.core.identity import OPERATOR, SERVICES
from phoenixcp.errors import ConfigError
from phoenixcp.platform.embedded import EmbeddedBao
from phoenixcp.platform.rpc import (
    GrpcServer,
    RotatingIdentity,
    RpcMetrics,
    health_status,
    secure_channel,
)
from phoenixcp.platform.secrets import VaultCertificates, VaultClient, VaultConfig, ensure_pki
from phoenixcp.platform.tls import CertBundle, LocalCA

pytestmark = pytest.mark.integration

NAMES = [s.name for s in SERVICES]
HOUR = dt.timedelta(hours=1)


def client_for(bao: EmbeddedBao, **config: object) -> VaultClient:
    return VaultClient(VaultConfig(addr=bao.addr, token=bao.root_token, **config))  # type: ignore[arg-type]


def fresh_mount() -> str:
    return f"pki-test-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def vault(bao_server: EmbeddedBao) -> VaultClient:
    client = client_for(bao_server)
    ensure_pki(client, services=NAMES, max_ttl=HOUR)
    return client


@pytest.fixture(scope="module")
def certs(vault: VaultClient) -> VaultCertificates:
    return VaultCertificates(client=vault)


def test_ensure_pki_twice_changes_nothing_the_second_time(bao_server: EmbeddedBao) -> None:
    client = client_for(bao_server, pki_mount=fresh_mount())
    mount = client.config.pki_mount
    first = ensure_pki(client, services=NAMES, max_ttl=HOUR)
    assert first.mount_enabled and first.max_lease_ttl_tuned
    assert first.ca_created == "generated root"
    assert set(first.roles_written) == {*NAMES, OPERATOR}
    ca_before = _cert_field(client.read(f"{mount}/cert/ca"))
    issuers_before = client.list(f"{mount}/issuers")

    second = ensure_pki(client, services=NAMES, max_ttl=HOUR)

    assert not second.changed, second
    assert _cert_field(client.read(f"{mount}/cert/ca")) == ca_before
    assert client.list(f"{mount}/issuers") == issuers_before
    assert len(issuers_before) == 1
    root = x509.load_pem_x509_certificate(ca_before.encode())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Phoenix root CA"


def _cert_field(response: dict[str, object] | None) -> str:
    assert response is not None
    data = response["data"]
    assert isinstance(data, dict)
    return str(data["certificate"])


def test_ensure_pki_repairs_a_changed_role_only(bao_server: EmbeddedBao) -> None:
    client = client_for(bao_server, pki_mount=fresh_mount())
    ensure_pki(client, services=NAMES, max_ttl=HOUR)
    mount = client.config.pki_mount
    client.write(f"{mount}/roles/chaos-engineer",
                 {"allowed_uri_sans": ["spiffe://phoenix/operator"], "allow_any_name": True})
    changes = ensure_pki(client, services=NAMES, max_ttl=HOUR)
    assert changes.roles_written == ("chaos-engineer",)
    assert not changes.ca_created
    role = client.read(f"{mount}/roles/chaos-engineer")
    assert role is not None
    assert role["data"]["allowed_uri_sans"] == ["spiffe://phoenix/chaos-engineer"]
    assert role["data"]["allow_any_name"] is False


def test_ensure_pki_refuses_a_mount_of_another_type(bao_server: EmbeddedBao) -> None:
    client = client_for(bao_server, pki_mount="secret")
    with pytest.raises(ConfigError, match="holds a 'kv' engine, not pki"):
        ensure_pki(client, services=NAMES, max_ttl=HOUR)


def test_issued_certificate_has_phoenix_shape(certs: VaultCertificates) -> None:
    ttl = dt.timedelta(minutes=30)
    before = dt.datetime.now(dt.UTC)
    bundle = certs.issue("cost-optimizer", ttl=ttl)
    cert = bundle.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://phoenix/cost-optimizer"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert bundle.spiffe_id == "spiffe://phoenix/cost-optimizer"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cost-optimizer"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert b"BEGIN PRIVATE KEY" in bundle.key_pem  # PKCS#8, as the local CA writes it
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    # TTL: Vault ends the certificate ttl after issuing it.
    assert abs((cert.not_valid_after_utc - before - ttl).total_seconds()) < 5
    ca = x509.load_pem_x509_certificates(bundle.ca_pem)
    assert len(ca) == 1
    cert.verify_directly_issued_by(ca[0])


def test_ttl_is_capped_by_the_role(certs: VaultCertificates) -> None:
    bundle = certs.issue("operator", ttl=dt.timedelta(days=30))
    lifetime = bundle.not_after - dt.datetime.now(dt.UTC)
    assert lifetime <= HOUR


def test_a_role_issues_only_its_own_identity(vault: VaultClient) -> None:
    mount = vault.config.pki_mount
    with pytest.raises(ConfigError, match="URI Subject Alternative Names"):
        vault.write(f"{mount}/issue/chaos-engineer",
                    {"common_name": "chaos-engineer", "uri_sans": "spiffe://phoenix/operator"})
    with pytest.raises(ConfigError):
        vault.write(f"{mount}/issue/chaos-engineer", {"common_name": "operator"})


def test_unknown_identity_says_how_to_fix(certs: VaultCertificates) -> None:
    with pytest.raises(ConfigError, match=r"no role for 'nobody'.*ensure_pki"):
        certs.issue("nobody", ttl=HOUR)


async def serve(bundle: CertBundle) -> GrpcServer:
    server = GrpcServer(bindings=[], listen="127.0.0.1:0",
                        credentials=RotatingIdentity(bundle).server_credentials(),
                        metrics=RpcMetrics(CollectorRegistry()))
    await server.start()
    await server.set_serving(True)
    return server


@pytest.fixture
async def vault_served(certs: VaultCertificates) -> AsyncIterator[str]:
    server = await serve(certs.issue("performance-monitor", ttl=HOUR))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


async def test_mtls_between_vault_issued_certificates(
    vault_served: str, certs: VaultCertificates
) -> None:
    assert await health_status(vault_served, certs.issue(OPERATOR, ttl=HOUR)) == "SERVING"
    assert await health_status(vault_served, certs.issue("chaos-engineer", ttl=HOUR)) == (
        "SERVING")


async def test_a_foreign_certificate_is_refused_at_the_handshake(
    vault_served: str, tmp_path: Path
) -> None:
    foreign = LocalCA.open(tmp_path / "ca").issue(OPERATOR, ttl=HOUR)
    assert await health_status(vault_served, foreign) == "UNREACHABLE"
    # Told apart from an RPC error: the connection itself never comes up.
    async with secure_channel(vault_served, foreign) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _ca(name: str, *, signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = signer or (None, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if signer is None else 0),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


async def test_an_intermediate_ca_is_imported_instead_of_a_root(
    bao_server: EmbeddedBao, tmp_path: Path
) -> None:
    root = _ca("Corp root")
    intermediate = _ca("Phoenix intermediate", signer=root)
    bundle_file = tmp_path / "intermediate.pem"
    bundle_file.write_bytes(_pem(intermediate[0]) + _key_pem(intermediate[1]) + _pem(root[0]))
    client = client_for(bao_server, pki_mount=fresh_mount(), issuer_pem_bundle=bundle_file)

    first = ensure_pki(client, services=NAMES, max_ttl=HOUR)
    assert first.ca_created == "imported intermediate"
    assert not ensure_pki(client, services=NAMES, max_ttl=HOUR).changed

    source = VaultCertificates(client=client)
    server_bundle = source.issue("cardinality-guard", ttl=HOUR)
    chain = x509.load_pem_x509_certificates(server_bundle.ca_pem)
    assert [c.subject for c in chain] == [intermediate[0].subject, root[0].subject]
    server_bundle.certificate.verify_directly_issued_by(intermediate[0])
    server = await serve(server_bundle)
    try:
        address = f"127.0.0.1:{server.port}"
        assert await health_status(address, source.issue(OPERATOR, ttl=HOUR)) == "SERVING"
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ("no-root", "chain from the intermediate up to its root"),
        ("no-key", "no unencrypted private key"),
        ("leaf", "is not a CA"),
    ],
)
def test_a_bad_intermediate_bundle_is_refused_before_vault_sees_it(
    bao_server: EmbeddedBao, tmp_path: Path, contents: str, message: str
) -> None:
    root = _ca("Corp root")
    intermediate = _ca("Phoenix intermediate", signer=root)
    leaf = LocalCA(cert=root[0], key=root[1]).issue("x", ttl=HOUR)
    pem = {
        "no-root": _pem(intermediate[0]) + _key_pem(intermediate[1]),
        "no-key": _pem(intermediate[0]) + _pem(root[0]),
        "leaf": leaf.cert_pem + leaf.key_pem + _pem(root[0]),
    }[contents]
    bundle_file = tmp_path / "bundle.pem"
    bundle_file.write_bytes(pem)
    client = client_for(bao_server, pki_mount=fresh_mount(), issuer_pem_bundle=bundle_file)
    with pytest.raises(ConfigError, match=message):
        ensure_pki(client, services=NAMES, max_ttl=HOUR)


def test_config_is_immutable_and_hides_the_token(bao_server: EmbeddedBao) -> None:
    config = VaultConfig(addr=bao_server.addr, token=bao_server.root_token)
    assert bao_server.root_token not in repr(config)
    assert bao_server.root_token not in repr(VaultClient(config))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.addr = "http://elsewhere:8200"  # type: ignore[misc]

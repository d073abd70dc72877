"""Certificate rotation with OpenBao: renewed at 2/3 of its life under an open stream.

A gRPC server takes a 24 s certificate from OpenBao; a client opens a health ``Watch`` stream;
:class:`CertificateRenewer` renews the certificate at two thirds of its life. Then:

* the renewal happened before the old certificate expired;
* a new TLS handshake is served the new certificate (serial read with Python's ``ssl``);
* the stream opened under the old certificate still delivers updates, even after that
  certificate has expired (TLS checks validity at the handshake only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from phoenixcp.core.identity import OPERATOR, SERVICES
from phoenixcp.platform.embedded import EmbeddedBao
from phoenixcp.platform.rpc import (
    GrpcServer,
    RotatingIdentity,
    RpcMetrics,
    health_status,
    secure_channel,
)
from phoenixcp.platform.secrets import (
    RENEW_AT,
    CertificateRenewer,
    VaultCertificates,
    VaultClient,
    VaultConfig,
    ensure_pki,
)
from phoenixcp.platform.tls import CertBundle

pytestmark = pytest.mark.integration

TTL = dt.timedelta(seconds=24)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def served_certificate_serial(port: int, client: CertBundle, directory: Path) -> int:
    """Open a fresh TLS connection as ``client`` and return the serial the server presents."""
    ca, cert, key = client.write(directory, "client")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_renewal_under_an_open_stream(bao_server: EmbeddedBao, tmp_path: Path) -> None:
    client = VaultClient(VaultConfig(addr=bao_server.addr, token=bao_server.root_token))
    ensure_pki(client, services=[s.name for s in SERVICES], max_ttl=dt.timedelta(hours=1))
    source = VaultCertificates(client=client)
    operator = source.issue(OPERATOR, ttl=dt.timedelta(hours=1))

    first = await asyncio.to_thread(source.issue, "metrics-pipeline", ttl=TTL)
    issued_at = time.time()
    identity = RotatingIdentity(first)
    server = GrpcServer(bindings=[], listen="127.0.0.1:0",
                        credentials=identity.server_credentials(),
                        metrics=RpcMetrics(CollectorRegistry()))
    port = await server.start()
    address = f"127.0.0.1:{port}"
    await server.set_serving(True)

    switched: list[float] = []
    renewed = asyncio.Event()

    def on_renewed(_: CertBundle) -> None:
        switched.append(time.time())
        renewed.set()

    renewer = CertificateRenewer(source=source, identity=identity, name="metrics-pipeline",
                                 ttl=TTL, on_renewed=on_renewed, received_at=issued_at)
    renewing = asyncio.create_task(renewer.run())
    try:
        served = await asyncio.to_thread(
            served_certificate_serial, port, operator, tmp_path / "a")
        assert served == first.certificate.serial_number

        async with secure_channel(address, operator) as channel:
            updates = aiter(health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")))
            assert (await anext(updates)).status == SERVING
            stream_opened = time.time()

            await asyncio.wait_for(renewed.wait(), TTL.total_seconds())
            switch = switched[0]
            second = identity.bundle
            old_expiry = first.not_after.timestamp()
            assert second.certificate.serial_number != first.certificate.serial_number
            assert switch < old_expiry, "renewed only after the old certificate expired"
            expected = issued_at + (old_expiry - issued_at) * RENEW_AT
            assert abs(switch - expected) < 2.0

            served = await asyncio.to_thread(
                served_certificate_serial, port, operator, tmp_path / "b")
            assert served == second.certificate.serial_number

            # Outlive the first certificate, then prove the stream opened under it still works.
            await asyncio.sleep(max(0.0, old_expiry - time.time() + 1.0))
            await server.set_serving(False)
            assert (await asyncio.wait_for(anext(updates), 5)).status == NOT_SERVING
            await server.set_serving(True)
            assert (await asyncio.wait_for(anext(updates), 5)).status == SERVING
            update_after_expiry = time.time()

        assert await health_status(address, operator) == "SERVING"  # a new gRPC connection
        assert renewer.renewals == 1
        print(
            f"\nrotation: TTL {TTL.total_seconds():.0f}s; renewed {switch - issued_at:.2f}s "
            f"after issue (expected {expected - issued_at:.2f}s = 2/3 of life); old cert had "
            f"{old_expiry - switch:.2f}s left at the switch; new handshake served serial "
            f"{second.certificate.serial_number:x} (old {first.certificate.serial_number:x}); "
            f"stream opened at +{stream_opened - issued_at:.2f}s still delivered an update at "
            f"+{update_after_expiry - issued_at:.2f}s, {update_after_expiry - old_expiry:.2f}s "
            "after the old certificate expired"
        )
    finally:
        renewer.shutdown()
        await renewing
        await server.stop(0)

"""mTLS credentials whose certificate can be swapped while the server runs.

A :class:`RotatingIdentity` holds the current :class:`~phoenixcp.platform.tls.CertBundle`.
Servers built from :meth:`server_credentials` ask it for a new certificate on each handshake
(gRPC's dynamic server credentials), so a renewed certificate takes effect without a restart
and without touching open streams; clients built later use the new bundle.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
from pathlib import Path

import grpc

from phoenixcp.platform.tls import CertBundle

__all__ = ["RotatingIdentity", "channel_credentials"]


def channel_credentials(bundle: CertBundle) -> grpc.ChannelCredentials:
    """Client credentials that present ``bundle``'s certificate and trust its CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.key_pem,
        certificate_chain=bundle.cert_pem,
    )


def _load(context: ssl.SSLContext, bundle: CertBundle) -> None:
    # ssl only loads keys from files: write them to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="phoenix-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(bundle.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(bundle.key_pem)
        context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=bundle.ca_pem.decode())


def _config(bundle: CertBundle) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(bundle.key_pem, bundle.cert_pem)], root_certificates=bundle.ca_pem
    )


class RotatingIdentity:
    """This process's certificate; ``update`` swaps it. Safe to call from any thread."""

    def __init__(self, bundle: CertBundle) -> None:
        self._lock = threading.Lock()
        self._bundle = bundle
        self._pending: CertBundle | None = None
        self._contexts: list[ssl.SSLContext] = []

    @property
    def bundle(self) -> CertBundle:
        return self._bundle

    def update(self, bundle: CertBundle) -> None:
        """Make ``bundle`` the certificate that the next TLS handshake presents."""
        with self._lock:
            self._bundle = bundle
            self._pending = bundle
            contexts = list(self._contexts)
        for context in contexts:
            _load(context, bundle)

    def server_credentials(self, *, require_client_auth: bool = True) -> grpc.ServerCredentials:
        """gRPC server credentials; by default they require a client certificate signed by the
        trusted CA (mTLS)."""
        return grpc.dynamic_ssl_server_credentials(
            _config(self._bundle),
            self._fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"
            require_client_authentication=require_client_auth,
        )

    def server_ssl_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """An ``ssl`` server context (for HTTP listeners) that follows every ``update``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        _load(context, self._bundle)
        with self._lock:
            self._contexts.append(context)
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self._bundle)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core on handshakes; None means "keep the current certificate".
        with self._lock:
            pending, self._pending = self._pending, None
        return _config(pending) if pending is not None else None

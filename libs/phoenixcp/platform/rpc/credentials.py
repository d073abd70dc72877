"""mTLS credentials whose certificate can be swapped while the server runs.

A :class:`RotatingIdentity` holds the current :class:`~phoenixcp.platform.tls.CertBundle`.
Servers built from :meth:`server_credentials` ask it for a new certificate on each handshake
(gRPC's dynamic server credentials), so a renewed certificate takes effect without a restart
and without touching open streams; clients built later use the new bundle.
"""

from __future__ import annotations

import threading

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

    @property
    def bundle(self) -> CertBundle:
        return self._bundle

    def update(self, bundle: CertBundle) -> None:
        """Make ``bundle`` the certificate that the next TLS handshake presents."""
        with self._lock:
            self._bundle = bundle
            self._pending = bundle

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by the trusted CA."""
        return grpc.dynamic_ssl_server_credentials(
            _config(self._bundle),
            self._fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"
            require_client_authentication=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self._bundle)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core on handshakes; None means "keep the current certificate".
        with self._lock:
            pending, self._pending = self._pending, None
        return _config(pending) if pending is not None else None

"""Authorisation of every RPC by the caller's SPIFFE ID (ADR 0003), against an :class:`Acl`.

The mTLS handshake has already proved the caller holds a certificate from Phoenix's CA; this
interceptor decides whether that identity may call the method. gRPC exposes the verified peer
certificate in ``context.auth_context()``; the keys it fills for a TLS peer (grpcio 1.85) are::

    transport_security_type      [b'ssl']
    security_level               [b'TSI_PRIVACY_AND_INTEGRITY']
    x509_subject, x509_common_name, x509_pem_cert
    x509_subject_alternative_name  every SAN: [b'spiffe://phoenix/x', b'localhost', ...]
    peer_uri, peer_dns, peer_ip    the SANs by type
    peer_spiffe_id               the URI SAN, only when the cert has exactly one SPIFFE ID
    ssl_session_reused, ssl_tls_version, ssl_negotiated_key_exchange_group

so the identity is ``peer_spiffe_id``, with no certificate parsing per call. A certificate with
several SPIFFE IDs (gRPC then sets none) or none at all has no identity and is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from phoenixcp.core.acl import Acl
from phoenixcp.errors import PermissionDenied
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY, error_detail
from phoenixcp.platform.rpc.handlers import Guard, GuardInterceptor

__all__ = ["AuthorizationInterceptor", "peer_identity"]

log = logging.getLogger(__name__)

_SPIFFE_ID_KEY = "peer_spiffe_id"


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's SPIFFE ID from its verified certificate; None without TLS or without one."""
    values = list(context.auth_context().get(_SPIFFE_ID_KEY) or ())
    if len(values) != 1:
        return None
    return bytes(values[0]).decode("utf-8", "replace")


class AuthorizationInterceptor(GuardInterceptor):
    """Refuses, with PERMISSION_DENIED, every call the ACL does not allow the caller to make.

    Works for all four kinds of RPC: the check runs before the handler sees a request. The
    status message names the identity, the method and who is allowed; the trailers carry the
    usual ``ErrorDetail`` (reason PERMISSION_DENIED). With a ``registry``, refusals are counted
    in ``phoenix_grpc_server_denied_total{grpc_service, grpc_method, peer}``. Stateless apart
    from the counter; one instance may serve many servers.
    """

    def __init__(self, acl: Acl, *, registry: CollectorRegistry | None = None) -> None:
        self._acl = acl
        self._denied = (
            Counter(
                "phoenix_grpc_server_denied_total",
                "RPCs refused by authorisation, by method and caller identity.",
                ["grpc_service", "grpc_method", "peer"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    def guard_for(self, method: str) -> Guard:
        @contextlib.asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            identity = peer_identity(context)
            if not self._acl.allows(identity, method):
                await self._deny(identity, method, context)
            yield

        return guard

    async def _deny(
        self, identity: str | None, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        message = self._acl.explain_denial(identity, method)
        if self._denied is not None:
            service, _, name = method.lstrip("/").partition("/")
            self._denied.labels(service, name, identity or "none").inc()
        log.warning("rpc denied", extra={"fields": {
            "method": method, "peer": identity, "peer_address": context.peer()}})
        trailers = ((ERROR_DETAIL_KEY, error_detail(PermissionDenied(message))
                     .SerializeToString()),)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message,
                            trailing_metadata=trailers)

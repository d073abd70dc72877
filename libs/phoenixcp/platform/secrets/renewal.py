"""Keeping a server's certificate fresh, whichever CA issues it (Vault or the local CA).

:class:`CertificateRenewer` re-issues a certificate at two thirds of its life and hands it to
:class:`~phoenixcp.platform.rpc.RotatingIdentity`, whose dynamic server credentials present it
from the next TLS handshake on; open connections and streams keep the session they have.

The life is measured from when the certificate *arrived*, not from its ``notBefore``: CAs
backdate ``notBefore`` against clock skew (the local CA by 5 minutes, Vault by 30 s), which for
a short TTL would put the renewal point in the past and renew in a tight loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from phoenixcp.platform.rpc.credentials import RotatingIdentity
from phoenixcp.platform.tls import CertBundle, CertificateSource

__all__ = ["RENEW_AT", "CertificateRenewer"]

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3
"""The fraction of a certificate's life after which it is renewed (ADR 0003)."""


class CertificateRenewer:
    """Renews ``identity``'s certificate for ``name`` from ``source`` until shut down.

    ``run()`` loops: sleep until ``renew_at`` of the current certificate's life, issue a new one
    in a worker thread (sources may block on the network), swap it into ``identity``, call
    ``on_renewed``. A failed issue is logged and retried with backoff from ``retry_min`` to
    ``retry_max``; the current certificate stays in use meanwhile. ``shutdown()`` is idempotent
    and makes ``run()`` return. One ``run()`` at a time.

    ``received_at`` is the Unix time ``identity``'s current certificate was issued; by default
    now, which is right when the renewer is built just after the first ``issue``.
    """

    def __init__(
        self,
        *,
        source: CertificateSource,
        identity: RotatingIdentity,
        name: str,
        ttl: dt.timedelta,
        renew_at: float = RENEW_AT,
        retry_min: dt.timedelta = dt.timedelta(seconds=1),
        retry_max: dt.timedelta = dt.timedelta(seconds=30),
        on_renewed: Callable[[CertBundle], None] | None = None,
        received_at: float | None = None,
    ) -> None:
        if not 0 < renew_at < 1:
            raise ValueError(f"renew_at must be between 0 and 1, not {renew_at}")
        self._source = source
        self._identity = identity
        self._name = name
        self._ttl = ttl
        self._renew_at = renew_at
        self._retry = (retry_min.total_seconds(), retry_max.total_seconds())
        self._on_renewed = on_renewed
        self._received = time.time() if received_at is None else received_at
        self._stop = asyncio.Event()
        self.renewals = 0

    def next_renewal(self) -> float:
        """Unix time at which the current certificate will be renewed."""
        not_after = self._identity.bundle.not_after.timestamp()
        start = max(self._received, self._identity.bundle.certificate.not_valid_before_utc
                    .timestamp())
        return start + (not_after - start) * self._renew_at

    async def renew(self) -> CertBundle:
        """Issue a certificate now and make it current. Raises what the source raises."""
        fresh = await asyncio.to_thread(self._source.issue, self._name, ttl=self._ttl)
        previous = self._identity.bundle
        self._identity.update(fresh)
        self._received = time.time()
        self.renewals += 1
        log.info("certificate renewed", extra={"fields": {
            "identity": self._name,
            "serial": format(fresh.certificate.serial_number, "x"),
            "not_after": fresh.not_after.isoformat(),
            "previous_expires_in_s": round(previous.not_after.timestamp() - self._received, 1),
        }})
        if self._on_renewed is not None:
            self._on_renewed(fresh)
        return fresh

    async def run(self) -> None:
        """Renew on schedule until :meth:`shutdown` (or cancellation)."""
        delay = self._retry[0]
        while not self._stop.is_set():
            if await self._sleep(self.next_renewal() - time.time()):
                return
            try:
                await self.renew()
                delay = self._retry[0]
            except Exception as exc:  # any failure: keep the current cert, try again
                expires_in = self._identity.bundle.not_after.timestamp() - time.time()
                log.warning("certificate renewal failed; retrying", extra={"fields": {
                    "identity": self._name, "error": str(exc), "retry_in_s": delay,
                    "current_expires_in_s": round(expires_in, 1)}})
                if await self._sleep(delay):
                    return
                delay = min(delay * 2, self._retry[1])

    async def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when shut down meanwhile."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except TimeoutError:
                pass
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Stop renewing; ``run`` returns. Idempotent; the current certificate stays in use."""
        self._stop.set()

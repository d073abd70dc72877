"""Prometheus remote-write 1.0 out: snappy-compressed ``WriteRequest`` over HTTP keep-alive."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final
from urllib.parse import urlsplit

import cramjam

from phoenixcp.errors import ConfigError
from phoenixcp.platform.client_tls import client_ssl_context, is_loopback_host
from phoenixcp.platform.config_loader import FieldInvalid
from phoenixcp.platform.export.config import RemoteWriteConfig
from phoenixcp.platform.export.http_client import HttpClient, HttpClientError
from phoenixcp.platform.export.result import ExportOutcome, ExportResult
from phoenixcp.platform.redact import redacted_endpoint

__all__ = ["RemoteWriteExporter", "classify_status"]

_log = logging.getLogger(__name__)

_HEADERS: Final = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "phoenix-control-plane",
}
_REASON_CHARS: Final = 512
#: An error body is read up to this size; a longer one is cut and its connection closed.
_ERROR_BODY_BYTES: Final = 64 * 1024
#: Not about the data: throttling, timeouts, and credentials being rotated. Dead-lettering
#: them would throw good data away, so they are retried (the queue pushes back meanwhile).
_RETRY_4XX: Final = frozenset({401, 403, 408, 425, 429})


def classify_status(status: int) -> ExportResult:
    """2xx SUCCESS; 5xx and the retryable 4xx (408, 429, 401/403) RETRYABLE; other REJECTED."""
    if 200 <= status < 300:
        return ExportResult.SUCCESS
    if status >= 500 or status in _RETRY_4XX or status < 200:
        return ExportResult.RETRYABLE
    return ExportResult.REJECTED


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from TSDBs, and backoff covers it


class RemoteWriteExporter:
    """Posts to one remote-write URL over a pool of keep-alive connections (our own HTTP/1.1
    client, :mod:`~phoenixcp.platform.export.http_client`: aiohttp's cost 3x the CPU).

    Nothing connects at construction, but the TLS files (``ca_file``, ``cert_file``,
    ``key_file``) are read then, and an ``http://`` URL to a host that is not loopback, or
    ``insecure_skip_verify``, is logged as a warning. Logs and errors show the URL's password
    as ``***`` (:func:`~phoenixcp.platform.redact.redacted_endpoint`). Concurrency:
    ``export`` may run concurrently (up to ``max_connections`` sockets; more callers wait
    their turn). Never raises; the constructor raises :class:`~phoenixcp.errors.ConfigError`
    for a URL or header it cannot send, and for a TLS file it cannot use (naming the option,
    the file and why).
    """

    def __init__(self, *, config: RemoteWriteConfig) -> None:
        self._config = config
        try:
            context = client_ssl_context(config)
        except FieldInvalid as exc:
            raise ConfigError(f"export.{exc.field}: {exc}", key=exc.field) from None
        try:
            self._client = HttpClient(config.url, max_connections=config.max_connections,
                                      timeout=config.timeout,
                                      headers=_merged(_HEADERS, config.headers),
                                      ssl_context=context, server_hostname=config.server_name,
                                      max_body=_ERROR_BODY_BYTES)
        except ValueError as exc:  # a URL without a host, a header with a line break
            raise ConfigError(f"export: {exc}") from exc
        self._closed = False
        self._verify_hint = _verify_hint(config)
        url = redacted_endpoint(config.url)
        parts = urlsplit(config.url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            _log.warning(
                "exporter %s sends metrics to %s unencrypted (http://): anyone on the path "
                "can read and change them. For TLS use an https:// URL, with ca_file (the "
                "backend's CA, if not in the system's roots), cert_file and key_file (mTLS), "
                "server_name (a name the certificate has, if not the URL's host)",
                config.name, url, extra={"fields": {"exporter": config.name, "url": url}})
        if config.insecure_skip_verify:
            _log.warning("TLS certificate verification is off for this exporter "
                         "(insecure_skip_verify): anyone on the path can read and change "
                         "what it sends", extra={"fields": {"exporter": config.name,
                                                             "url": url}})

    @property
    def name(self) -> str:
        """The exporter's name in metrics and logs."""
        return self._config.name

    async def export(self, body: bytes, *, tenant: str, snappy: bool = False) -> ExportOutcome:
        """POST ``body`` snappy-compressed (as given when ``snappy``); see
        :func:`classify_status` for the outcome."""
        if self._closed:
            return ExportOutcome(ExportResult.RETRYABLE, "exporter is shut down")
        headers = {"X-Scope-OrgID": tenant} if self._config.tenant_header and tenant else None
        try:
            data = body if snappy else bytes(cramjam.snappy.compress_raw(body))
            response = await self._client.post(data, headers=headers)
            status = response.status
            result = classify_status(status)
            if result is ExportResult.SUCCESS:
                return ExportOutcome(result)
            text = response.text()[:_REASON_CHARS].strip()
            return ExportOutcome(result, f"HTTP {status}: {text}",
                                 _retry_after(response.header("Retry-After")))
        except (HttpClientError, OSError) as exc:  # TimeoutError is an OSError
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                reason += self._verify_hint
            return ExportOutcome(ExportResult.RETRYABLE, reason[:_REASON_CHARS])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the contract: never raise into the worker
            return ExportOutcome(ExportResult.RETRYABLE,
                                 f"unexpected {type(exc).__name__}: {exc}"[:_REASON_CHARS])

    async def shutdown(self) -> None:
        """Close the connections; idempotent."""
        self._closed = True
        await self._client.close()


def _verify_hint(config: RemoteWriteConfig) -> str:
    """What the exporter checked the backend's certificate against, for a failed check."""
    trusted = f"ca_file {config.ca_file}" if config.ca_file else "the system's CA roots"
    name = config.server_name or urlsplit(config.url).hostname
    return f" (checked against {trusted}, for the name {name})"


def _merged(defaults: dict[str, str], configured: dict[str, str]) -> dict[str, str]:
    """``defaults`` with ``configured`` on top, header names compared case-insensitively."""
    overridden = {name.lower() for name in configured}
    return {**{k: v for k, v in defaults.items() if k.lower() not in overridden}, **configured}

"""TLS options of a client (the remote-write and OTLP/gRPC exporters): checked, then made an
SSLContext (HTTPS) or read as PEM bytes (gRPC, which takes bytes).

The options are named as in Prometheus' ``tls_config``:

- ``ca_file``: verify the server against this PEM CA bundle instead of the system's roots;
- ``cert_file`` and ``key_file`` (both or neither): present this client certificate (mTLS);
- ``server_name``: the name sent as SNI and checked against the server's certificate, when it
  differs from the URL's host (an IP address, a load balancer's name);
- ``insecure_skip_verify``: do not verify the server's certificate at all (tests only).

A gRPC client (OTLP) takes the first four with the same meaning (``server_name`` becomes the
channel option ``grpc.ssl_target_name_override``); instead of a URL scheme, ``insecure``
says whether it uses TLS: true is plaintext, false is TLS, unset is TLS exactly when one of
the four is set (see :func:`grpc_uses_tls`). gRPC cannot skip verification.

The config file's schema (``pipeline.exporters``), ``RemoteWriteConfig`` and
``OtlpExporterConfig`` check the options with these functions, which raise
:class:`~phoenixcp.platform.config_loader.FieldInvalid` naming the option; each schema turns
that into its own ``ConfigError``. :func:`client_ssl_context` and
:func:`read_client_tls_files` read the files when they are called, with the same checks
(readable, PEM, the key is the certificate's and not encrypted), so a missing or unusable
file stops the start instead of failing the first send.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from phoenixcp.platform.config_loader import FieldInvalid
from phoenixcp.platform.redact import redacted_endpoint

__all__ = [
    "GRPC_TLS_OPTIONS",
    "TLS_OPTIONS",
    "ClientTlsFiles",
    "ClientTlsOptions",
    "GrpcTlsOptions",
    "check_client_tls",
    "check_grpc_client_tls",
    "client_ssl_context",
    "grpc_uses_tls",
    "is_loopback_host",
    "read_client_tls_files",
    "tls_options_set",
]

#: Every option, in the order errors about them are reported.
TLS_OPTIONS: Final = ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")
#: The options of a gRPC client that need TLS, in the same order.
GRPC_TLS_OPTIONS: Final = ("ca_file", "cert_file", "key_file", "server_name")


class _TlsNames(Protocol):
    """The options every client has: the files and the name to check."""

    @property
    def ca_file(self) -> str | None: ...

    @property
    def cert_file(self) -> str | None: ...

    @property
    def key_file(self) -> str | None: ...

    @property
    def server_name(self) -> str | None: ...


class ClientTlsOptions(_TlsNames, Protocol):
    """The TLS options of an HTTPS client config (a frozen dataclass has them as fields)."""

    @property
    def insecure_skip_verify(self) -> bool: ...


class GrpcTlsOptions(_TlsNames, Protocol):
    """The TLS options of a gRPC client config: ``insecure`` instead of a URL scheme."""

    @property
    def insecure(self) -> bool | None: ...


def tls_options_set(options: ClientTlsOptions) -> list[str]:
    """The names of the options that are set (not None, not False), in ``TLS_OPTIONS`` order."""
    return [name for name in TLS_OPTIONS if getattr(options, name) not in (None, False)]


def grpc_uses_tls(options: GrpcTlsOptions) -> bool:
    """Whether a gRPC client with these options uses TLS: ``not insecure`` when it is set,
    else whether any of ``GRPC_TLS_OPTIONS`` is (plaintext when none is, as before they
    existed)."""
    if options.insecure is not None:
        return not options.insecure
    return any(getattr(options, name) is not None for name in GRPC_TLS_OPTIONS)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, an IP address, an IPv6 address with or without brackets)
    stays on this machine: ``localhost``, a name under ``.localhost`` (RFC 6761), or a
    loopback address. A plaintext exporter warns when its target is not."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_not_empty(options: _TlsNames) -> None:
    for name in GRPC_TLS_OPTIONS:
        value = getattr(options, name)
        if value is not None and not value.strip():
            raise FieldInvalid(name, "is empty; leave it out instead")


def _check_pair(options: _TlsNames) -> None:
    if options.cert_file is not None and options.key_file is None:
        raise FieldInvalid("key_file", "is missing: cert_file needs its private key in "
                           "key_file (set both or neither)")
    if options.key_file is not None and options.cert_file is None:
        raise FieldInvalid("cert_file", "is missing: key_file needs its certificate in "
                           "cert_file (set both or neither)")


def check_grpc_client_tls(options: GrpcTlsOptions) -> None:
    """Raise FieldInvalid when a gRPC client's options cannot work together; reads no file."""
    _check_not_empty(options)
    if options.insecure:
        given = [name for name in GRPC_TLS_OPTIONS if getattr(options, name) is not None]
        if given:
            raise FieldInvalid(given[0], "is a TLS option, but insecure is true (plaintext); "
                               "drop insecure (TLS is on when a TLS option is set) or drop "
                               "the TLS options")
    _check_pair(options)


def check_client_tls(options: ClientTlsOptions, *, url: str) -> None:
    """Raise FieldInvalid when the options cannot work for ``url`` or together; reads no file."""
    _check_not_empty(options)
    given = tls_options_set(options)
    if given and not url.startswith("https://"):
        raise FieldInvalid(given[0], f"is a TLS option, but {redacted_endpoint(url)!r} is not "
                           "an https:// URL; use https:// or drop the TLS options")
    _check_pair(options)
    if options.insecure_skip_verify and options.ca_file is not None:
        raise FieldInvalid("ca_file", "is not used when insecure_skip_verify is true (the "
                           "server's certificate is not checked at all); drop one of them")


class _Encrypted(Exception):
    """The private key asked for a passphrase (instead of OpenSSL prompting on the TTY)."""


def _refuse_passphrase() -> str:
    raise _Encrypted


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FieldInvalid(name, f"{path!r} cannot be read: {exc.strerror or exc}") from None


def client_ssl_context(options: ClientTlsOptions) -> ssl.SSLContext | None:
    """The client context the options describe, its files read now; None when no option needs
    one (``server_name`` alone does not: it is the name the client checks).

    Verifies the server (system roots, or ``ca_file``'s bundle only) and its hostname unless
    ``insecure_skip_verify``; ALPN ``http/1.1``. Raises FieldInvalid naming the option whose
    file cannot be used and why. Call :func:`check_client_tls` first.
    """
    if options.ca_file is None and options.cert_file is None \
            and not options.insecure_skip_verify:
        return None
    if options.insecure_skip_verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif options.ca_file is not None:
        context = _verifying_with(options.ca_file)
    else:
        context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if options.cert_file is not None and options.key_file is not None:
        _load_client_certificate(context, options.cert_file, options.key_file)
    return context


@dataclass(frozen=True, slots=True)
class ClientTlsFiles:
    """The PEM bytes of a client's TLS files (None: not configured), for gRPC's
    ``ssl_channel_credentials``."""

    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None


def read_client_tls_files(options: _TlsNames) -> ClientTlsFiles:
    """Read the files after checking them as :func:`client_ssl_context` does, with the same
    FieldInvalid messages. Call :func:`check_grpc_client_tls` (or ``check_client_tls``)
    first."""
    if options.ca_file is not None:
        _verifying_with(options.ca_file)
    if options.cert_file is not None and options.key_file is not None:
        _load_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                                 options.cert_file, options.key_file)
    return ClientTlsFiles(
        ca_pem=None if options.ca_file is None else _read("ca_file", options.ca_file),
        cert_pem=None if options.cert_file is None else _read("cert_file", options.cert_file),
        key_pem=None if options.key_file is None else _read("key_file", options.key_file))


def _verifying_with(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_file``'s bundle only."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise FieldInvalid("ca_file", f"{ca_file!r} holds no PEM certificate "
                           f"({exc.reason or exc}); a CA bundle is one or more "
                           "'-----BEGIN CERTIFICATE-----' blocks") from None
    except OSError as exc:
        raise FieldInvalid("ca_file", f"{ca_file!r} cannot be read: "
                           f"{exc.strerror or exc}") from None


def _load_client_certificate(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    cert_pem = _read("cert_file", cert_file)
    _read("key_file", key_file)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_passphrase)
    except _Encrypted:
        raise FieldInvalid("key_file", f"{key_file!r} is encrypted; give the key without a "
                           "passphrase (Phoenix has no passphrase option)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise FieldInvalid("key_file", f"{key_file!r} is not the private key of the "
                               f"certificate in {cert_file!r}") from None
        # OpenSSL says only "PEM lib": find out which of the two files it could not read.
        if not _holds_certificate(cert_pem):
            raise FieldInvalid("cert_file", f"{cert_file!r} holds no PEM certificate "
                               "('-----BEGIN CERTIFICATE-----' block)") from None
        raise FieldInvalid("key_file", f"{key_file!r} holds no usable PEM private key "
                           f"({exc.reason or exc})") from None
    except OSError as exc:
        raise FieldInvalid("cert_file", f"{cert_file!r} or {key_file!r} cannot be read: "
                           f"{exc.strerror or exc}") from None


def _holds_certificate(pem: bytes) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError):
        return False
    return True

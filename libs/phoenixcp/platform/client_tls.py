"""TLS options of an HTTPS client (the remote-write exporter): checked, then made an SSLContext.

The options are named as in Prometheus' ``tls_config``:

- ``ca_file``: verify the server against this PEM CA bundle instead of the system's roots;
- ``cert_file`` and ``key_file`` (both or neither): present this client certificate (mTLS);
- ``server_name``: the name sent as SNI and checked against the server's certificate, when it
  differs from the URL's host (an IP address, a load balancer's name);
- ``insecure_skip_verify``: do not verify the server's certificate at all (tests only).

Both the config file's schema (``pipeline.exporters``) and ``RemoteWriteConfig`` check the
options with these functions, which raise
:class:`~phoenixcp.platform.config_loader.FieldInvalid` naming the option; each schema turns
that into its own ``ConfigError``. :func:`client_ssl_context` reads the files when it is
called, so a missing or unusable file stops the start instead of failing the first send.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final, Protocol

from phoenixcp.platform.config_loader import FieldInvalid

__all__ = [
    "TLS_OPTIONS",
    "ClientTlsOptions",
    "check_client_tls",
    "client_ssl_context",
    "tls_options_set",
]

#: Every option, in the order errors about them are reported.
TLS_OPTIONS: Final = ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")


class ClientTlsOptions(Protocol):
    """The TLS options of a client config (a frozen dataclass has them as fields)."""

    @property
    def ca_file(self) -> str | None: ...

    @property
    def cert_file(self) -> str | None: ...

    @property
    def key_file(self) -> str | None: ...

    @property
    def server_name(self) -> str | None: ...

    @property
    def insecure_skip_verify(self) -> bool: ...


def tls_options_set(options: ClientTlsOptions) -> list[str]:
    """The names of the options that are set (not None, not False), in ``TLS_OPTIONS`` order."""
    return [name for name in TLS_OPTIONS if getattr(options, name) not in (None, False)]


def check_client_tls(options: ClientTlsOptions, *, url: str) -> None:
    """Raise FieldInvalid when the options cannot work for ``url`` or together; reads no file."""
    for name in ("ca_file", "cert_file", "key_file", "server_name"):
        value = getattr(options, name)
        if value is not None and not value.strip():
            raise FieldInvalid(name, "is empty; leave it out instead")
    given = tls_options_set(options)
    if given and not url.startswith("https://"):
        raise FieldInvalid(given[0], f"is a TLS option, but {url!r} is not an https:// URL; "
                           "use https:// or drop the TLS options")
    if options.cert_file is not None and options.key_file is None:
        raise FieldInvalid("key_file", "is missing: cert_file needs its private key in "
                           "key_file (set both or neither)")
    if options.key_file is not None and options.cert_file is None:
        raise FieldInvalid("cert_file", "is missing: key_file needs its certificate in "
                           "cert_file (set both or neither)")
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
        try:
            context = ssl.create_default_context(cafile=options.ca_file)
        except ssl.SSLError as exc:
            raise FieldInvalid("ca_file", f"{options.ca_file!r} holds no PEM certificate "
                               f"({exc.reason or exc}); a CA bundle is one or more "
                               "'-----BEGIN CERTIFICATE-----' blocks") from None
        except OSError as exc:
            raise FieldInvalid("ca_file", f"{options.ca_file!r} cannot be read: "
                               f"{exc.strerror or exc}") from None
    else:
        context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if options.cert_file is not None and options.key_file is not None:
        _load_client_certificate(context, options.cert_file, options.key_file)
    return context


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

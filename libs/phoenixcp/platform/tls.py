"""Certificates for mTLS: the embedded local CA and the sources a service takes its cert from.

Every Phoenix certificate has the same shape, whoever signs it: an EC P-256 key, the SPIFFE ID
``spiffe://phoenix/<name>`` as URI SAN, and ``localhost``/``127.0.0.1``/``::1`` (plus any extra
hosts) as DNS/IP SANs, so peers can authenticate by identity and clients can dial loopback.

The local CA lives in one directory (``ca.pem``, ``ca.key`` mode 0600). Creating it is safe
against several processes racing (first writer wins, the others load its files).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from phoenixcp.core.identity import spiffe_id
from phoenixcp.errors import ConfigError

__all__ = [
    "DEFAULT_HOSTS",
    "CertBundle",
    "CertificateSource",
    "FileCertificates",
    "LocalCA",
    "peer_spiffe_id",
]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CA_LIFETIME = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
_CREATE_WAIT = 5.0  # seconds a process waits for a concurrent creator to finish


@dataclass(frozen=True, slots=True)
class CertBundle:
    """A certificate with its key and the CA bundle that verifies peers (all PEM bytes)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def spiffe_id(self) -> str | None:
        return peer_spiffe_id(self.cert_pem)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path, Path]:
        """Write ``ca.pem``, ``<stem>.pem`` and ``<stem>.key`` (0600) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, cert, key = directory / "ca.pem", directory / f"{stem}.pem", directory / f"{stem}.key"
        _write_atomic(ca, self.ca_pem, 0o644)
        _write_atomic(cert, self.cert_pem, 0o644)
        _write_atomic(key, self.key_pem, 0o600)
        return ca, cert, key


class CertificateSource(Protocol):
    """Where a service's certificate comes from: the local CA, files, or (later) Vault."""

    def issue(self, name: str, *, ttl: dt.timedelta) -> CertBundle:
        """A fresh certificate for identity ``name`` (a service or ``operator``)."""
        ...


def peer_spiffe_id(cert_pem: bytes) -> str | None:
    """The ``spiffe://`` URI SAN of a PEM certificate, or None when it has none."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri
    return None


class LocalCA:
    """The embedded certificate authority used when no Vault is configured.

    Thread- and process-safe to create; ``issue`` is pure computation and may be called from
    any thread.
    """

    def __init__(self, *, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def open(cls, directory: Path, *, create: bool = True) -> LocalCA:
        """Load the CA in ``directory``; create it first when it is missing and ``create``."""
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if not cert_path.exists():
            if not create:
                raise ConfigError(
                    f"no local CA in {directory} (ca.pem is missing); start the stack with "
                    "`phoenixctl up`, or set tls.source to files"
                )
            cls._create(directory)
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the local CA in {directory} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the local CA key in {key_path} is not an EC key")
        return cls(cert=cert, key=key)

    @staticmethod
    def _create(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Phoenix"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Phoenix local CA"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The key is linked into place first and the cert last: a reader that sees ca.pem
        # always finds the matching key. os.link fails when another process won the race.
        try:
            _link_new(directory / "ca.key", key_pem, 0o600)
        except FileExistsError:
            # Another process won and is about to link its ca.pem; wait for it.
            deadline = time.monotonic() + _CREATE_WAIT
            while not (directory / "ca.pem").exists():
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"{directory} has ca.key but no ca.pem; a CA creation was interrupted. "
                        "Remove the directory to create a new CA (clients must then trust it)"
                    ) from None
                time.sleep(0.01)
            return
        _link_new(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(
        self, name: str, *, ttl: dt.timedelta, hosts: Iterable[str] = DEFAULT_HOSTS
    ) -> CertBundle:
        """A certificate for ``name`` valid for ``ttl``, usable as server and as client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(name))]
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Phoenix"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        return CertBundle(
            ca_pem=self.ca_pem,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


class FileCertificates:
    """A certificate provisioned by someone else (cert-manager, a file from Vault agent)."""

    def __init__(self, *, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self._paths = (ca_file, cert_file, key_file)

    def issue(self, name: str, *, ttl: dt.timedelta) -> CertBundle:
        try:
            ca, cert, key = (p.read_bytes() for p in self._paths)
        except OSError as exc:
            raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
        return CertBundle(ca_pem=ca, cert_pem=cert, key_pem=key)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, replacing what was there."""
    _write_new(path, data, mode, replace=True)


def _link_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole or not at all; FileExistsError when it exists already."""
    _write_new(path, data, mode, replace=False)


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if not replace or os.path.exists(tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

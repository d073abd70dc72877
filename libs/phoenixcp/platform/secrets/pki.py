"""Vault's PKI engine as Phoenix's certificate authority.

:func:`ensure_pki` sets a mount up so that it issues exactly the certificates Phoenix uses (ADR
0003): EC P-256, URI SAN ``spiffe://phoenix/<name>``, DNS/IP SANs ``localhost``, ``127.0.0.1``,
``::1``, usable as server and client. It is a reconciler: it reads what is there, changes only
what differs, and never replaces an existing CA. Run it once per deployment with a privileged
token (``phoenixctl up --vault`` does); the services themselves only need ``issue/<own name>``.

:class:`VaultCertificates` is the :class:`~phoenixcp.platform.tls.CertificateSource` that
issues from such a mount, so a service takes its certificate from Vault exactly as it takes it
from the local CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from phoenixcp.core.identity import OPERATOR, spiffe_id
from phoenixcp.errors import ConfigError
from phoenixcp.platform.secrets.vault import VaultClient
from phoenixcp.platform.tls import DEFAULT_HOSTS, CertBundle

__all__ = ["PkiChanges", "VaultCertificates", "ensure_pki"]

log = logging.getLogger(__name__)

ROOT_COMMON_NAME = "Phoenix root CA"
_NOT_BEFORE = dt.timedelta(seconds=30)  # backdating tolerates small clock skew between hosts
_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----",
                          re.DOTALL)


@dataclass(frozen=True, slots=True)
class PkiChanges:
    """What :func:`ensure_pki` changed; all empty/False when the mount was already right."""

    mount_enabled: bool = False
    max_lease_ttl_tuned: bool = False
    ca_created: str = ""
    """``"generated root"``, ``"imported intermediate"``, or empty when a CA existed."""
    roles_written: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return (self.mount_enabled or self.max_lease_ttl_tuned or bool(self.ca_created)
                or bool(self.roles_written))


def _seconds(ttl: dt.timedelta) -> int:
    return int(ttl.total_seconds())


def role_for(name: str, *, max_ttl: dt.timedelta) -> dict[str, Any]:
    """The PKI role that lets ``name`` have exactly Phoenix's certificate shape and nothing more.

    Values are written as Vault reads them back (TTLs in seconds, lists), so a role can be
    compared with what is stored.
    """
    return {
        "allowed_uri_sans": [spiffe_id(name)],
        "allowed_uri_sans_template": False,
        # The common name is the bare identity name (as the local CA writes it); nothing else.
        "allowed_domains": [name],
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_wildcard_certificates": False,
        "allow_any_name": False,
        "enforce_hostnames": True,
        "allow_localhost": True,
        "allow_ip_sans": True,
        "key_type": "ec",
        "key_bits": 256,
        "key_usage": ["DigitalSignature", "KeyAgreement"],
        "server_flag": True,
        "client_flag": True,
        "code_signing_flag": False,
        "email_protection_flag": False,
        "organization": ["Phoenix"],
        "ttl": _seconds(max_ttl),
        "max_ttl": _seconds(max_ttl),
        "not_before_duration": _seconds(_NOT_BEFORE),
        "issuer_ref": "default",
    }


def ensure_pki(
    client: VaultClient,
    *,
    services: Sequence[str],
    max_ttl: dt.timedelta,
    ca_ttl: dt.timedelta = dt.timedelta(days=365),
) -> PkiChanges:
    """Make ``client.config.pki_mount`` issue Phoenix certificates; idempotent.

    Enables the mount if missing; raises its maximum lease TTL to ``max(ca_ttl, max_ttl)``;
    creates a CA only when the mount has none (imports ``config.issuer_pem_bundle`` when set,
    else generates an EC P-256 root valid ``ca_ttl``); writes one role per name in ``services``
    plus ``operator`` whose settings differ from :func:`role_for`. A second run changes nothing.
    Not safe to race with itself on an empty mount (two roots could be generated): run it from
    one place. Raises the errors of :class:`VaultClient`.
    """
    mount = client.config.pki_mount
    mounts = client.mounts()
    mount_enabled = mount not in mounts
    if mount_enabled:
        client.enable_mount(mount, engine="pki")
    elif mounts[mount] != "pki":
        raise ConfigError(
            f"vault.pki_mount: {mount!r} holds a {mounts[mount]!r} engine, not pki; "
            "choose another mount path", key="vault.pki_mount")

    lease = max(ca_ttl, max_ttl)
    tuned = client.max_lease_ttl(mount) != lease
    if tuned:
        client.tune_max_lease_ttl(mount, lease)

    ca_created = _ensure_ca(client, mount, ca_ttl=ca_ttl)

    written = []
    for name in dict.fromkeys((*services, OPERATOR)):
        desired = role_for(name, max_ttl=max_ttl)
        stored = (client.read(f"{mount}/roles/{name}") or {}).get("data") or {}
        if any(stored.get(key) != value for key, value in desired.items()):
            client.write(f"{mount}/roles/{name}", desired)
            written.append(name)

    changes = PkiChanges(mount_enabled=mount_enabled, max_lease_ttl_tuned=tuned,
                         ca_created=ca_created, roles_written=tuple(written))
    log.info("vault pki ready", extra={"fields": {
        "mount": mount, "addr": client.addr, "changed": changes.changed,
        "ca_created": ca_created, "roles_written": list(written)}})
    return changes


def _ensure_ca(client: VaultClient, mount: str, *, ca_ttl: dt.timedelta) -> str:
    bundle_path = client.config.issuer_pem_bundle
    if client.list(f"{mount}/issuers"):
        if bundle_path is not None:
            log.warning("vault pki mount already has a CA; vault.issuer_pem_bundle is ignored",
                        extra={"fields": {"mount": mount, "issuer_pem_bundle": str(bundle_path)}})
        return ""
    if bundle_path is not None:
        pem_bundle = _read_issuer_bundle(bundle_path)
        client.write(f"{mount}/config/ca", {"pem_bundle": pem_bundle})
        return "imported intermediate"
    client.write(f"{mount}/root/generate/internal", {
        "common_name": ROOT_COMMON_NAME,
        "organization": "Phoenix",
        "key_type": "ec",
        "key_bits": 256,
        "ttl": f"{_seconds(ca_ttl)}s",
        "issuer_name": "phoenix-root",
    })
    return "generated root"


def _read_issuer_bundle(path: Path) -> str:
    """The PEM bundle, checked: one EC/RSA key, its CA certificate, the chain up to a root."""
    key = "vault.issuer_pem_bundle"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}", key=key) from None
    try:
        certs = x509.load_pem_x509_certificates(text)
    except ValueError:
        raise ConfigError(f"{key}: {path} holds no PEM certificate", key=key) from None
    found = _PRIVATE_KEY.search(text)
    try:
        private = serialization.load_pem_private_key(found.group(0), None) if found else None
    except (ValueError, TypeError):  # encrypted, or not a key after all
        private = None
    if private is None:
        raise ConfigError(f"{key}: {path} holds no unencrypted private key for the "
                          "intermediate CA", key=key)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    issuer = next((c for c in certs if c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == public),
        None)
    if issuer is None:
        raise ConfigError(f"{key}: no certificate in {path} matches its private key", key=key)
    try:
        is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{key}: the certificate for the key in {path} is not a CA "
                          "(basicConstraints CA:TRUE)", key=key)
    if not _reaches_root(issuer, certs):
        raise ConfigError(
            f"{key}: {path} must also hold the chain from the intermediate up to its root "
            "CA, so that peers can verify it", key=key)
    return text.decode("ascii")


def _reaches_root(cert: x509.Certificate, pool: list[x509.Certificate]) -> bool:
    for _ in range(len(pool) + 1):
        if cert.issuer == cert.subject:
            return True
        parent = next((c for c in pool if c.subject == cert.issuer and c is not cert), None)
        if parent is None:
            return False
        cert = parent
    return False


class VaultCertificates:
    """Issues Phoenix certificates from Vault's PKI engine; a ``CertificateSource``.

    ``issue`` is blocking (one HTTP round trip, plus one per CA in the mount): call it through
    ``asyncio.to_thread`` on an event loop. Safe to call from several threads.
    """

    def __init__(self, *, client: VaultClient, hosts: Iterable[str] = DEFAULT_HOSTS) -> None:
        self._client = client
        self._mount = client.config.pki_mount
        self._dns: list[str] = []
        self._ips: list[str] = []
        for host in hosts:
            try:
                self._ips.append(str(ipaddress.ip_address(host)))
            except ValueError:
                self._dns.append(host)

    def issue(self, name: str, *, ttl: dt.timedelta) -> CertBundle:
        """A fresh key and certificate for ``name`` valid ``ttl`` (capped by the role's max).

        ``ca_pem`` is the trust bundle: the issuing chain first, then every other CA of the
        mount that is not revoked, so that peers keep trusting each other while an operator
        rotates the CA. ConfigError when ``name`` has no role (run ``ensure_pki``).
        """
        try:
            response = self._client.write(f"{self._mount}/issue/{name}", {
                "common_name": name,
                "exclude_cn_from_sans": True,
                "alt_names": ",".join(self._dns),
                "ip_sans": ",".join(self._ips),
                "uri_sans": spiffe_id(name),
                "ttl": f"{max(_seconds(ttl), 1)}s",
                "private_key_format": "pkcs8",
            })
        except ConfigError as exc:
            if "unknown role" not in str(exc):
                raise
            raise ConfigError(
                f"{exc}; {self._mount} has no role for {name!r}: set the mount up with "
                "`phoenixctl up --vault` (or ensure_pki) including this name", key=exc.key
            ) from exc
        data = (response or {}).get("data") or {}
        try:
            chain = list(data.get("ca_chain") or [data["issuing_ca"]])
            bundle = CertBundle(ca_pem=self._trust_bundle(chain),
                                cert_pem=_pem(data["certificate"]),
                                key_pem=_pem(data["private_key"]))
        except KeyError as exc:
            raise ConfigError(f"Vault at {self._client.addr} answered {self._mount}/issue/{name} "
                              f"without {exc.args[0]}; is {self._mount} a pki mount?") from None
        log.debug("certificate issued by vault", extra={"fields": {
            "identity": name, "serial": data.get("serial_number"),
            "not_after": bundle.not_after.isoformat()}})
        return bundle

    def _trust_bundle(self, chain: list[str]) -> bytes:
        pems = dict.fromkeys(p.strip() for p in chain)
        for issuer_id in self._client.list(f"{self._mount}/issuers"):
            issuer = (self._client.read(f"{self._mount}/issuer/{issuer_id}") or {}).get("data")
            if issuer and not issuer.get("revoked") and issuer.get("certificate"):
                pems.setdefault(str(issuer["certificate"]).strip())
        return b"".join(_pem(p) for p in pems)

    def __repr__(self) -> str:
        return f"VaultCertificates(addr={self._client.addr!r}, mount={self._mount!r})"


def _pem(text: str) -> bytes:
    return text.strip().encode("ascii") + b"\n"


"""Vault (or OpenBao) for Phoenix: certificates from its PKI engine, secrets from KV v2.

::

    config = VaultConfig(addr="https://vault:8200", token_file=Path("/var/run/vault/token"))
    client = VaultClient(config)                      # raises ConfigError without a token
    ensure_pki(client, services=[s.name for s in SERVICES], max_ttl=config.cert_ttl)  # once
    source = VaultCertificates(client=client)         # a tls.CertificateSource
    password = VaultSecrets(client=client).read("backends/victoria")["password"]

Every call raises :mod:`phoenixcp.errors` (Unavailable, PermissionDenied, ConfigError,
NotFound), never hvac's or requests' exceptions. :class:`CertificateRenewer` keeps a server's
certificate fresh from any source, Vault or the local CA.
"""

from phoenixcp.platform.secrets.kv import SecretData, VaultSecrets
from phoenixcp.platform.secrets.pki import PkiChanges, VaultCertificates, ensure_pki, role_for
from phoenixcp.platform.secrets.renewal import RENEW_AT, CertificateRenewer
from phoenixcp.platform.secrets.vault import (
    VAULT_TOKEN_ENV,
    VaultClient,
    VaultConfig,
    VaultProbe,
)

__all__ = [
    "RENEW_AT",
    "VAULT_TOKEN_ENV",
    "CertificateRenewer",
    "PkiChanges",
    "SecretData",
    "VaultCertificates",
    "VaultClient",
    "VaultConfig",
    "VaultProbe",
    "VaultSecrets",
    "ensure_pki",
    "role_for",
]

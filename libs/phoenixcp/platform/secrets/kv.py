"""Secrets services need (backend credentials, webhook tokens), read from Vault's KV v2 engine.

Values stay out of logs: :class:`SecretData` is a ``dict[str, str]`` whose ``repr`` and ``str``
show only the keys, so a secret that ends up in a log call, an exception or a debugger prints
as ``SecretData(keys=['password'])``. Nothing in this module logs a value.
"""

from __future__ import annotations

import logging

from phoenixcp.errors import ConfigError, NotFound
from phoenixcp.platform.secrets.vault import VaultClient

__all__ = ["SecretData", "VaultSecrets"]

log = logging.getLogger(__name__)


class SecretData(dict[str, str]):
    """The key/value pairs of one secret. A plain dict whose representation hides the values."""

    def __repr__(self) -> str:
        return f"SecretData(keys={sorted(self)!r})"

    __str__ = __repr__

    def copy(self) -> SecretData:
        return SecretData(self)


class VaultSecrets:
    """Reads secrets from the KV v2 mount ``config.kv_mount``. Blocking; thread-safe."""

    def __init__(self, *, client: VaultClient) -> None:
        self._client = client
        self._mount = client.config.kv_mount

    def read(self, path: str, *, version: int | None = None) -> SecretData:
        """The latest (or the given) version of the secret at ``path``.

        NotFound when there is none or it was deleted; ConfigError when a value is not a string
        (Phoenix's secrets are strings: passwords, tokens, URLs); the errors of
        :class:`VaultClient` otherwise.
        """
        path = path.strip("/")
        query = f"?version={version}" if version is not None else ""
        where = f"{self._mount}/{path}"
        response = self._client.read(f"{self._mount}/data/{path}{query}")
        body = (response or {}).get("data") or {}
        data = body.get("data")
        if data is None:
            # KV v2 answers 404 for a deleted version too; both read as "not there".
            raise NotFound(
                f"no secret at {where} in Vault at {self._client.addr}; write it with "
                f"`bao kv put -mount={self._mount} {path} KEY=VALUE`")
        secret = SecretData()
        for key, value in data.items():
            if not isinstance(value, str):
                raise ConfigError(
                    f"secret {where}: key {key!r} holds a {type(value).__name__}, not a string")
            secret[key] = value
        log.debug("secret read", extra={"fields": {
            "path": where, "keys": sorted(secret),
            "version": (body.get("metadata") or {}).get("version")}})
        return secret

    def __repr__(self) -> str:
        return f"VaultSecrets(addr={self._client.addr!r}, mount={self._mount!r})"

"""The connection to Vault (or OpenBao): its config and a thin client that speaks Phoenix errors.

:class:`VaultClient` wraps a synchronous ``hvac.Client``. Every method translates what hvac and
requests raise into :mod:`phoenixcp.errors` at this boundary, with a message that names the
Vault address, what was being done and what to check::

    requests ConnectionError, Timeout; Vault 429/5xx, sealed     -> Unavailable
    Vault 401/403 (bad, expired or under-privileged token)       -> PermissionDenied
    Vault 400 (a request the mount or role refuses), TLS that
    cannot be verified, no token configured                      -> ConfigError
    Vault 404 on a write                                         -> NotFound

Reads of a path that holds nothing return ``None``. The client is blocking (requests): call it
from a thread (``asyncio.to_thread``) when on an event loop. The token never appears in a
message, a log line or a ``repr``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from phoenixcp.errors import ConfigError, NotFound, PermissionDenied, PhoenixError, Unavailable
from phoenixcp.platform.config_loader import FieldInvalid

if TYPE_CHECKING:
    import hvac
    import hvac.exceptions

__all__ = ["VAULT_TOKEN_ENV", "VaultClient", "VaultConfig", "VaultProbe"]


def _libs() -> tuple[ModuleType, ModuleType]:
    """hvac and requests, imported on first use: a process without Vault (the default, and
    every data-path replica) does not carry them (~6 MiB of RSS)."""
    import hvac
    import hvac.exceptions
    import requests

    return hvac, requests

VAULT_TOKEN_ENV = "VAULT_TOKEN"
"""Vault's own variable; used when neither ``vault.token_file`` nor ``vault.token`` is set."""

_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)*$")
_T = TypeVar("_T")


def _check_mount(name: str, value: str) -> None:
    if not _MOUNT.match(value):
        raise FieldInvalid(
            name, f"{value!r} is not a mount path such as phoenix-pki (no leading or "
            "trailing slash)"
        )


@dataclass(frozen=True, kw_only=True)
class VaultConfig:
    """Where Vault is and how Phoenix uses it (the ``vault:`` section of the config file).

    ``token_file`` wins over ``token``, which wins over ``$VAULT_TOKEN``.
    """

    addr: str
    """``http(s)://host:port`` of the Vault or OpenBao API."""
    token: str = field(default="", repr=False)
    token_file: Path | None = None
    """A file holding the token (as Vault Agent writes it); read when the client is built."""
    pki_mount: str = "phoenix-pki"
    kv_mount: str = "secret"
    cert_ttl: timedelta = timedelta(hours=24)
    """What the PKI roles issue by default and the most they allow."""
    ca_bundle: Path | None = None
    """The CA that signed Vault's own TLS certificate; None = the system's trust store."""
    issuer_pem_bundle: Path | None = None
    """An intermediate CA to import (its key, its certificate, and the chain up to the root)
    instead of generating a root CA in ``pki_mount``. Only used when the mount has no CA yet."""
    timeout: timedelta = timedelta(seconds=5)
    """Per request; a Vault that does not answer within it is Unavailable."""

    def __post_init__(self) -> None:
        url = urlsplit(self.addr)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise FieldInvalid(
                "addr", f"{self.addr!r} is not an http:// or https:// URL, e.g. "
                "https://vault.example:8200"
            )
        _check_mount("pki_mount", self.pki_mount)
        _check_mount("kv_mount", self.kv_mount)
        if self.cert_ttl < timedelta(seconds=10):
            raise FieldInvalid("cert_ttl", "is too short; use 10s or longer (default 24h)")
        if self.timeout <= timedelta(0):
            raise FieldInvalid("timeout", "must be longer than 0s")

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str:
        """The token to use; ConfigError naming the three places when none is set."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"vault.token_file: cannot read {self.token_file}: {exc.strerror}",
                    key="vault.token_file",
                ) from None
            if not token:
                raise ConfigError(f"vault.token_file: {self.token_file} is empty",
                                  key="vault.token_file")
            return token
        if self.token:
            return self.token
        token = (os.environ if environ is None else environ).get(VAULT_TOKEN_ENV, "").strip()
        if token:
            return token
        raise ConfigError(
            f"no Vault token for {self.addr}: set vault.token_file, vault.token "
            f"(or PHOENIX_VAULT_TOKEN) or ${VAULT_TOKEN_ENV}",
            key="vault.token",
        )


def _connection_reason(exc: BaseException) -> str:
    # requests wraps the useful part ("[Errno 111] Connection refused") three levels deep.
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip().lower()
    _, requests = _libs()
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    return type(exc).__name__


def _vault_errors(exc: hvac.exceptions.VaultError) -> str:
    return "; ".join(str(e) for e in exc.errors or []) or str(exc.args[0] if exc.args else "")


class VaultClient:
    """A Vault session with one token. Blocking; safe to share between threads (requests is).

    Raises :class:`~phoenixcp.errors.ConfigError` at construction when no token is configured
    or ``ca_bundle`` is missing. Nothing is sent until the first call.
    """

    def __init__(self, config: VaultConfig, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        verify: bool | str = True
        if config.ca_bundle is not None:
            if not config.ca_bundle.is_file():
                raise ConfigError(f"vault.ca_bundle: {config.ca_bundle} does not exist",
                                  key="vault.ca_bundle")
            verify = str(config.ca_bundle)
        hvac, _ = _libs()
        self._hvac = hvac.Client(
            url=config.addr,
            token=config.resolve_token(environ),
            verify=verify,
            timeout=config.timeout.total_seconds(),
        )

    @property
    def addr(self) -> str:
        return self.config.addr

    def read(self, path: str) -> dict[str, Any] | None:
        """``GET /v1/<path>``: the response (with ``data``), or None when nothing is there."""
        response = self._call(f"reading {path}", self._hvac.read, path)
        return response if isinstance(response, dict) else None

    def write(self, path: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """``POST /v1/<path>`` with ``data``; the response, or None for 204 No Content."""
        response = self._call(f"writing {path}", self._hvac.write_data, path, data=dict(data))
        return response if isinstance(response, dict) else None

    def list(self, path: str) -> list[str]:
        """``LIST /v1/<path>``: the keys, or ``[]`` when there are none."""
        response = self._call(f"listing {path}", self._hvac.list, path)
        return list((response or {}).get("data", {}).get("keys", []))

    def mounts(self) -> dict[str, str]:
        """Mounted secrets engines: path (no trailing slash) -> type (``pki``, ``kv`` ...)."""
        response = self._call("listing secrets engines",
                              self._hvac.sys.list_mounted_secrets_engines)
        engines = response.get("data", response)
        return {path.rstrip("/"): info["type"] for path, info in engines.items()
                if isinstance(info, dict) and "type" in info}

    def enable_mount(self, path: str, *, engine: str) -> None:
        """Mount a secrets engine of type ``engine`` at ``path``."""
        self._call(f"enabling the {engine} engine at {path}",
                   self._hvac.sys.enable_secrets_engine, engine, path=path)

    def max_lease_ttl(self, path: str) -> timedelta:
        """The mount's maximum lease TTL (which also caps what a PKI mount can issue)."""
        response = self._call(f"reading the tuning of {path}",
                              self._hvac.sys.read_mount_configuration, path)
        return timedelta(seconds=int(response.get("data", response)["max_lease_ttl"]))

    def tune_max_lease_ttl(self, path: str, ttl: timedelta) -> None:
        self._call(f"tuning {path}", self._hvac.sys.tune_mount_configuration, path,
                   max_lease_ttl=f"{int(ttl.total_seconds())}s")

    def check(self) -> None:
        """Raise unless Vault answers, is unsealed and accepts the token (a readiness probe)."""
        self._call("looking up the token", self._hvac.auth.token.lookup_self)

    def close(self) -> None:
        """Release pooled connections. Idempotent."""
        self._hvac.adapter.close()

    def _call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        hvac, requests = _libs()
        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            raise self._translate(exc, what) from exc

    def _translate(self, exc: Exception, what: str) -> PhoenixError:
        hvac, requests = _libs()
        at = f"Vault at {self.addr}"
        if isinstance(exc, requests.exceptions.SSLError):
            return ConfigError(
                f"{at}: cannot verify its TLS certificate while {what} ({_connection_reason(exc)});"
                " set vault.ca_bundle to the CA that signed it", key="vault.ca_bundle")
        if isinstance(exc, requests.exceptions.RequestException):
            return Unavailable(
                f"{at} does not answer ({_connection_reason(exc)}) while {what}; check that it "
                "runs and that vault.addr is right (`phoenixctl up --vault` starts one locally)")
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            return PermissionDenied(
                f"{at} refused {what}: {_vault_errors(exc)}; the token has expired or its "
                "policy does not allow this path")
        if isinstance(exc, hvac.exceptions.VaultDown):
            return Unavailable(f"{at} is sealed or in standby ({_vault_errors(exc)}) while "
                               f"{what}; unseal it or point vault.addr at the active node")
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            return ConfigError(f"{at} rejected {what}: {_vault_errors(exc)}")
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return NotFound(f"{at}: nothing at that path while {what}")
        if isinstance(exc, hvac.exceptions.VaultNotInitialized):
            return ConfigError(f"{at} is not initialised; run `bao operator init` first")
        assert isinstance(exc, hvac.exceptions.VaultError)
        # 429, 5xx, 412 (a standby not caught up yet): all pass with time.
        return Unavailable(f"{at} failed {what}: {_vault_errors(exc)}; retrying later may help")

    def __repr__(self) -> str:
        return f"VaultClient(addr={self.addr!r})"


class VaultProbe:
    """Readiness probe (``platform.probes.DependencyProbe``): Vault answers and takes the token.

    Every failure is reported as :class:`Unavailable` (a revoked token too): a probe reports,
    it does not stop the service, which keeps its current certificate meanwhile.
    """

    name = "vault"

    def __init__(self, *, client: VaultClient) -> None:
        self._client = client

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._client.check)
        except Unavailable:
            raise
        except PhoenixError as exc:
            raise Unavailable(str(exc)) from exc

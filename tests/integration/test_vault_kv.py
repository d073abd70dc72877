"""KV v2 reads, tokens, and how Vault failures reach Phoenix code: as phoenixcp.errors."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import socket
import ssl
import threading
from pathlib import Path

import hvac
import pytest

from phoenixcp.errors import ConfigError, NotFound, PermissionDenied, Unavailable
from phoenixcp.platform.config_loader import FieldInvalid, load_mapping
from phoenixcp.platform.embedded import EmbeddedBao
from phoenixcp.platform.secrets import (
    VAULT_TOKEN_ENV,
    VaultCertificates,
    VaultClient,
    VaultConfig,
    VaultProbe,
    VaultSecrets,
    ensure_pki,
)
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def raw(bao_server: EmbeddedBao) -> hvac.Client:
    """Test setup writes secrets with hvac directly, as an operator would with `bao kv put`."""
    return hvac.Client(url=bao_server.addr, token=bao_server.root_token)


@pytest.fixture(scope="module")
def kv(bao_server: EmbeddedBao) -> VaultSecrets:
    return VaultSecrets(client=VaultClient(VaultConfig(addr=bao_server.addr,
                                                       token=bao_server.root_token)))


def test_read_returns_the_values_and_never_logs_or_shows_them(
    raw: hvac.Client, kv: VaultSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{secrets.token_urlsafe(12)}"
    token = f"tok-{secrets.token_urlsafe(12)}"
    raw.secrets.kv.v2.create_or_update_secret(
        path="backends/victoria", secret={"password": password, "webhook_token": token},
        mount_point="secret")

    with caplog.at_level(logging.DEBUG):  # every logger, urllib3's included
        secret = kv.read("backends/victoria")
        logging.getLogger("test").info("loaded %s", secret)
        logging.getLogger("test").info("loaded %r", secret, extra={"fields": {"s": secret}})

    assert secret == {"password": password, "webhook_token": token}
    assert secret["password"] == password
    for shown in (repr(secret), str(secret), f"{secret}", caplog.text,
                  *(str(r.__dict__) for r in caplog.records)):
        assert password not in shown and token not in shown
    assert repr(secret) == "SecretData(keys=['password', 'webhook_token'])"
    assert any(r.getMessage() == "secret read" for r in caplog.records)


def test_read_an_older_version(raw: hvac.Client, kv: VaultSecrets) -> None:
    path = f"rotating-{secrets.token_hex(4)}"
    raw.secrets.kv.v2.create_or_update_secret(path=path, secret={"k": "one"},
                                              mount_point="secret")
    raw.secrets.kv.v2.create_or_update_secret(path=path, secret={"k": "two"},
                                              mount_point="secret")
    assert kv.read(path)["k"] == "two"
    assert kv.read(path, version=1)["k"] == "one"


def test_a_missing_secret_says_how_to_write_it(kv: VaultSecrets) -> None:
    with pytest.raises(NotFound, match=r"no secret at secret/nope .*bao kv put -mount=secret nope"):
        kv.read("nope")


def test_a_deleted_secret_is_not_found(raw: hvac.Client, kv: VaultSecrets) -> None:
    raw.secrets.kv.v2.create_or_update_secret(path="gone", secret={"k": "v"},
                                              mount_point="secret")
    raw.secrets.kv.v2.delete_latest_version_of_secret(path="gone", mount_point="secret")
    with pytest.raises(NotFound):
        kv.read("gone")


def test_a_value_that_is_not_a_string_is_refused_without_showing_it(
    raw: hvac.Client, kv: VaultSecrets
) -> None:
    raw.secrets.kv.v2.create_or_update_secret(path="typed", secret={"port": 5432},
                                              mount_point="secret")
    with pytest.raises(ConfigError, match="key 'port' holds a int, not a string") as caught:
        kv.read("typed")
    assert "5432" not in str(caught.value)


def test_token_file_wins_then_token_then_vault_token(
    tmp_path: Path, bao_server: EmbeddedBao
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(bao_server.root_token + "\n")
    from_file = VaultConfig(addr=bao_server.addr, token="wrong", token_file=token_file)
    VaultClient(from_file, environ={VAULT_TOKEN_ENV: "wrong"}).check()

    VaultClient(VaultConfig(addr=bao_server.addr, token=bao_server.root_token),
                environ={VAULT_TOKEN_ENV: "wrong"}).check()
    VaultClient(VaultConfig(addr=bao_server.addr),
                environ={VAULT_TOKEN_ENV: bao_server.root_token}).check()

    with pytest.raises(ConfigError, match=r"no Vault token .* or \$VAULT_TOKEN"):
        VaultClient(VaultConfig(addr=bao_server.addr), environ={})
    with pytest.raises(ConfigError, match=r"vault\.token_file: cannot read"):
        VaultClient(VaultConfig(addr=bao_server.addr, token_file=tmp_path / "missing"))


def test_a_bad_token_is_permission_denied(bao_server: EmbeddedBao) -> None:
    client = VaultClient(VaultConfig(addr=bao_server.addr, token="not-a-token"))
    with pytest.raises(PermissionDenied, match=r"permission denied.*token has expired or its "
                       r"policy does not allow"):
        VaultSecrets(client=client).read("backends/victoria")


def test_a_token_without_the_policy_is_permission_denied(
    raw: hvac.Client, bao_server: EmbeddedBao
) -> None:
    raw.sys.create_or_update_policy("pki-only", 'path "phoenix-pki/issue/*" { capabilities = '
                                    '["update"] }')
    limited = raw.auth.token.create(policies=["pki-only"], ttl="5m")["auth"]["client_token"]
    client = VaultClient(VaultConfig(addr=bao_server.addr, token=limited))
    with pytest.raises(PermissionDenied, match=f"Vault at {bao_server.addr} refused reading"):
        VaultSecrets(client=client).read("backends/victoria")


def test_vault_away_is_unavailable_with_an_actionable_message(tmp_path: Path) -> None:
    bao = EmbeddedBao(data_dir=tmp_path / "bao").start()
    try:
        client = VaultClient(VaultConfig(addr=bao.addr, token=bao.root_token))
        ensure_pki(client, services=["cost-optimizer"], max_ttl=dt.timedelta(hours=1))
        source = VaultCertificates(client=client)
        source.issue("cost-optimizer", ttl=dt.timedelta(minutes=5))
    finally:
        bao.stop()
    with pytest.raises(Unavailable) as caught:
        source.issue("cost-optimizer", ttl=dt.timedelta(minutes=5))
    message = str(caught.value)
    assert message == (
        f"Vault at {bao.addr} does not answer (connection refused) while writing "
        "phoenix-pki/issue/cost-optimizer; check that it runs and that vault.addr is right "
        "(`phoenixctl up --vault` starts one locally)"
    )
    assert bao.root_token not in message
    with pytest.raises(Unavailable, match="does not answer"):
        client.check()


async def test_probe_reports_every_failure_as_unavailable(bao_server: EmbeddedBao) -> None:
    await VaultProbe(client=VaultClient(VaultConfig(addr=bao_server.addr,
                                                    token=bao_server.root_token))).check()
    bad_token = VaultProbe(client=VaultClient(VaultConfig(addr=bao_server.addr, token="nope")))
    with pytest.raises(Unavailable, match="refused looking up the token"):
        await bad_token.check()


def test_a_silent_vault_times_out_as_unavailable() -> None:
    # A listening socket that never answers HTTP: the request must time out, not hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = VaultClient(VaultConfig(addr=f"http://127.0.0.1:{port}", token="t",
                                         timeout=dt.timedelta(milliseconds=300)))
        with pytest.raises(Unavailable, match="does not answer"):
            client.check()


def test_unverifiable_vault_tls_is_a_config_error(tmp_path: Path) -> None:
    # A TLS server whose certificate the system trust store does not know.
    bundle = LocalCA.open(tmp_path / "ca").issue("vault", ttl=dt.timedelta(hours=1))
    _, cert_file, key_file = bundle.write(tmp_path / "tls", "vault")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def handshake_once() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                context.wrap_socket(conn, server_side=True).close()

        thread = threading.Thread(target=handshake_once, daemon=True)
        thread.start()
        client = VaultClient(VaultConfig(addr=f"https://localhost:{port}", token="t"))
        with pytest.raises(ConfigError, match=r"cannot verify its TLS certificate .*set "
                           r"vault\.ca_bundle to the CA that signed it"):
            client.check()
        thread.join(5)

    with pytest.raises(ConfigError, match=r"vault\.ca_bundle: .* does not exist"):
        VaultClient(VaultConfig(addr=f"https://127.0.0.1:{port}", token="t",
                                ca_bundle=tmp_path / "missing.pem"))


def test_config_loads_from_a_mapping_and_names_bad_keys() -> None:
    config = load_mapping(VaultConfig, {"addr": "https://vault:8200", "cert_ttl": "12h",
                                        "token_file": "/run/vault/token"})
    assert config.cert_ttl == dt.timedelta(hours=12)
    assert config.token_file == Path("/run/vault/token")
    with pytest.raises(ConfigError, match="addr: 'vault:8200' is not an http"):
        load_mapping(VaultConfig, {"addr": "vault:8200"})
    with pytest.raises(ConfigError, match="pki_mount: '/pki/' is not a mount path"):
        load_mapping(VaultConfig, {"addr": "http://v:1", "pki_mount": "/pki/"})
    with pytest.raises(FieldInvalid):
        VaultConfig(addr="http://v:1", cert_ttl=dt.timedelta(seconds=1))

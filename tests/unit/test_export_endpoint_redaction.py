"""A password in an exporter's endpoint is shown as ``***``, never as written: in the warnings
an exporter logs at start, and in every error a bad endpoint causes, from the exporter's own
config, the HTTP client, the pipeline's config file and ``phoenixctl up --backend``.

Nothing connects; the failed sends are in tests/integration/test_export_credentials.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from phoenixcp.cli.stack import Backend
from phoenixcp.errors import ConfigError
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.export import RemoteWriteConfig, RemoteWriteExporter
from phoenixcp.platform.export.http_client import HttpClient
from phoenixcp.platform.redact import redacted_endpoint

pytestmark = pytest.mark.unit

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(("endpoint", "shown"), [
    (f"https://user:{SECRET}@vm.example/api/v1/write", "https://user:***@vm.example/api/v1/write"),
    (f"http://user:{SECRET}@10.1.2.3:8428/api/v1/write?x=1",
     "http://user:***@10.1.2.3:8428/api/v1/write?x=1"),
    (f"https://:{SECRET}@vm.example/", "https://:***@vm.example/"),
    (f"https://user:{SECRET}@[2001:db8::1]:8428/w", "https://user:***@[2001:db8::1]:8428/w"),
    (f"https://user:p@{SECRET}@vm.example/w", "https://user:***@vm.example/w"),  # an @ in it
    ("https://user:s3cret%2FPw@vm.example/w", "https://user:***@vm.example/w"),
    # Unescaped / ? # in a password (base64 has /) break the URL, but hide it whole.
    (f"https://user:ab/{SECRET}+x=@vm.example:8428/w", "https://user:***@vm.example:8428/w"),
    (f"https://user:123/{SECRET}@vm.example/w", "https://user:***@vm.example/w"),
    (f"https://user:ab?{SECRET}@vm.example/w", "https://user:***@vm.example/w"),
    (f"user:{SECRET}@collector:4317", "user:***@collector:4317"),
    # No password: as written.
    ("https://user@vm.example/api/v1/write", "https://user@vm.example/api/v1/write"),
    ("https://vm.example:8428/api/v1/write?extra_label=owner=a@b.example",
     "https://vm.example:8428/api/v1/write?extra_label=owner=a@b.example"),
    ("https://[::1]:8428/a@b", "https://[::1]:8428/a@b"),
    ("collector.internal:4317", "collector.internal:4317"),
    ("", ""),
])
def test_the_password_is_shown_as_stars(endpoint: str, shown: str) -> None:
    assert redacted_endpoint(endpoint) == shown


def assert_hidden(text: str, *shown: str) -> None:
    assert SECRET not in text, text
    for part in shown:
        assert part in text, (part, text)


async def test_the_warnings_at_start_show_the_user_and_host_not_the_password(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    plain = RemoteWriteExporter(config=RemoteWriteConfig(
        url=f"http://user:{SECRET}@10.1.2.3:8428/api/v1/write", name="plain"))
    skipping = RemoteWriteExporter(config=RemoteWriteConfig(
        url=f"https://user:{SECRET}@vm.example/api/v1/write", name="lab",
        insecure_skip_verify=True))
    (unencrypted,) = [r for r in caplog.records if "unencrypted" in r.getMessage()]
    (unverified,) = [r for r in caplog.records if "insecure_skip_verify" in r.getMessage()]
    assert unencrypted.getMessage().startswith(
        "exporter plain sends metrics to http://user:***@10.1.2.3:8428/api/v1/write unencrypted")
    assert unencrypted.fields["url"] == "http://user:***@10.1.2.3:8428/api/v1/write"  # type: ignore[attr-defined]
    assert unverified.fields["url"] == "https://user:***@vm.example/api/v1/write"  # type: ignore[attr-defined]
    for record in caplog.records:
        assert_hidden(str(vars(record)))
    await plain.shutdown()
    await skipping.shutdown()


def test_errors_from_the_exporter_config_and_the_http_client_hide_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RemoteWriteConfig(url=f"ftp://user:{SECRET}@vm.example/w")
    assert_hidden(str(caught.value), "'ftp://user:***@vm.example/w' is not an http://")

    with pytest.raises(ConfigError) as caught:
        RemoteWriteConfig(url=f"http://user:{SECRET}@vm.example/w", ca_file="ca.pem")
    assert_hidden(str(caught.value), "'http://user:***@vm.example/w' is not an https:// URL")

    # urllib's own message would quote "Xq7", the password up to its unescaped /
    with pytest.raises(ConfigError) as caught:
        RemoteWriteExporter(config=RemoteWriteConfig(
            url=f"https://user:Xq7/{SECRET}@vm.example/w"))
    assert "Xq7" not in str(caught.value)
    assert_hidden(str(caught.value), "'https://user:***@vm.example/w': its port is not a number",
                  "%2F")

    # the codec's message would quote the character
    with pytest.raises(ValueError, match="Basic credentials are Latin-1") as raised:
        HttpClient(f"https://user:{SECRET}\u20ac@vm.example/w")
    assert_hidden(str(raised.value), "user:***@vm.example")
    assert "\u20ac" not in str(raised.value)

    with pytest.raises(ValueError) as raised:
        HttpClient(f"http://user:{SECRET}@vm.example/w", server_hostname="vm")
    assert_hidden(str(raised.value), "'http://user:***@vm.example/w'")


@pytest.mark.parametrize(("exporter", "shown"), [
    (f"type: remote-write\nendpoint: ftp://user:{SECRET}@vm.example/w",
     "'ftp://user:***@vm.example/w' is not an http(s):// URL"),
    (f"type: otlp\nendpoint: https://user:{SECRET}@collector:4317",
     "'https://user:***@collector:4317': give host:port for otlp"),
    (f"type: remote-write\nendpoint: http://user:{SECRET}@vm.example/w\nca_file: ca.pem",
     "'http://user:***@vm.example/w' is not an https:// URL"),
])
def test_the_config_file_errors_hide_the_password(tmp_path: Path, exporter: str,
                                                  shown: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  exporters:\n    - name: vm\n" + "".join(
        f"      {line}\n" for line in exporter.splitlines()))
    with pytest.raises(ConfigError) as caught:
        load_service_config(path, "metrics-pipeline", environ={})
    assert_hidden(str(caught.value), "pipeline.exporters[0].", shown)


@pytest.mark.parametrize("text", [
    f"remotewrite=https://user:{SECRET}@vm.example/w",
    f"https://user:{SECRET}@vm.example/w",
    f"https://user:a={SECRET}@vm.example/w",
])
def test_a_bad_backend_option_hides_the_password(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        Backend.parse(text)
    assert_hidden(str(raised.value), "user:***@vm.example/w' is not a backend")

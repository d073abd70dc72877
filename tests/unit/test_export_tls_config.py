"""The remote-write exporter's TLS options: each bad input stops the start with its own message,
from ``RemoteWriteConfig``, from the exporter (which reads the files) and from the config file.

Certificates come from the repository's local CA; nothing connects.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from phoenixcp.errors import ConfigError
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.export import RemoteWriteConfig, RemoteWriteExporter
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.unit

HTTPS = "https://127.0.0.1:9443/api/v1/write"
HTTP = "http://127.0.0.1:8428/api/v1/write"


class Files:
    """A CA bundle, a client certificate and key, another key, and files that are no PEM."""

    def __init__(self, directory: Path) -> None:
        ca = LocalCA.open(directory / "ca")
        hour = dt.timedelta(hours=1)
        self.ca, self.cert, self.key = (str(p) for p in ca.issue(
            "metrics-pipeline", ttl=hour).write(directory, "client"))
        _, _, other_key = ca.issue("other", ttl=hour).write(directory, "other")
        self.other_key = str(other_key)
        self.junk = str(directory / "junk.pem")
        Path(self.junk).write_text("not a PEM file\n")
        key = serialization.load_pem_private_key(Path(self.key).read_bytes(), None)
        self.encrypted_key = str(directory / "encrypted.key")
        Path(self.encrypted_key).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        self.missing = str(directory / "missing.pem")
        self.directory = str(directory)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("tls-files"))


@pytest.mark.parametrize(("options", "key", "message"), [
    ({"url": HTTP, "ca_file": "ca.pem"}, "ca_file",
     f"export.ca_file: is a TLS option, but '{HTTP}' is not an https:// URL"),
    ({"url": HTTP, "server_name": "vm"}, "server_name", "is not an https:// URL"),
    ({"url": HTTP, "insecure_skip_verify": True}, "insecure_skip_verify",
     "is not an https:// URL"),
    ({"url": HTTPS, "cert_file": "c.pem"}, "key_file",
     "export.key_file: is missing: cert_file needs its private key in key_file (set both or "
     "neither)"),
    ({"url": HTTPS, "key_file": "c.key"}, "cert_file",
     "export.cert_file: is missing: key_file needs its certificate in cert_file"),
    ({"url": HTTPS, "ca_file": ""}, "ca_file", "export.ca_file: is empty; leave it out"),
    ({"url": HTTPS, "server_name": " "}, "server_name", "export.server_name: is empty"),
    ({"url": HTTPS, "ca_file": "ca.pem", "insecure_skip_verify": True}, "ca_file",
     "export.ca_file: is not used when insecure_skip_verify is true"),
])
def test_options_that_cannot_work_are_refused_by_the_config(
        options: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RemoteWriteConfig(**options)  # type: ignore[arg-type]
    assert caught.value.key == key
    assert message in str(caught.value)


def bad_files(f: Files) -> list[tuple[dict[str, str], str, str]]:
    return [
        ({"ca_file": f.missing}, "ca_file",
         f"export.ca_file: '{f.missing}' cannot be read: No such file or directory"),
        ({"ca_file": f.directory}, "ca_file", "cannot be read: Is a directory"),
        ({"ca_file": f.junk}, "ca_file",
         f"export.ca_file: '{f.junk}' holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
        ({"ca_file": f.key}, "ca_file", "holds no PEM certificate"),
        ({"cert_file": f.missing, "key_file": f.key}, "cert_file",
         f"export.cert_file: '{f.missing}' cannot be read: No such file or directory"),
        ({"cert_file": f.cert, "key_file": f.missing}, "key_file",
         f"export.key_file: '{f.missing}' cannot be read"),
        ({"cert_file": f.junk, "key_file": f.key}, "cert_file",
         f"export.cert_file: '{f.junk}' holds no PEM certificate"),
        ({"cert_file": f.cert, "key_file": f.junk}, "key_file",
         f"export.key_file: '{f.junk}' holds no usable PEM private key"),
        ({"cert_file": f.cert, "key_file": f.other_key}, "key_file",
         f"export.key_file: '{f.other_key}' is not the private key of the certificate in "
         f"'{f.cert}'"),
        ({"cert_file": f.cert, "key_file": f.encrypted_key}, "key_file",
         f"export.key_file: '{f.encrypted_key}' is encrypted; give the key without a "
         "passphrase"),
    ]


def test_files_that_cannot_be_used_stop_the_exporter_at_construction(files: Files) -> None:
    for options, key, message in bad_files(files):
        config = RemoteWriteConfig(url=HTTPS, **options)  # the config reads no file
        with pytest.raises(ConfigError) as caught:
            RemoteWriteExporter(config=config)
        assert (caught.value.key, message in str(caught.value)) == (key, True), (
            options, str(caught.value))


async def test_good_files_make_an_exporter(files: Files) -> None:
    exporter = RemoteWriteExporter(config=RemoteWriteConfig(
        url=HTTPS, ca_file=files.ca, cert_file=files.cert, key_file=files.key,
        server_name="backend.internal"))
    await exporter.shutdown()


async def test_skipping_verification_is_logged_once_per_exporter(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    exporter = RemoteWriteExporter(config=RemoteWriteConfig(
        url=HTTPS, name="lab", insecure_skip_verify=True))
    warnings = [r for r in caplog.records if "insecure_skip_verify" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].fields["exporter"] == "lab"  # type: ignore[attr-defined]
    await exporter.shutdown()
    caplog.clear()
    RemoteWriteConfig(url=HTTPS, insecure_skip_verify=True)  # the config alone says nothing
    assert not caplog.records


@pytest.mark.parametrize(("url", "shown"), [
    ("http://vm.example:8428/api/v1/write", "http://vm.example:8428/api/v1/write"),
    ("http://user:secret@10.1.2.3:8428/api/v1/write",
     "http://user:***@10.1.2.3:8428/api/v1/write"),
    (HTTP, None),
    ("http://localhost:8428/api/v1/write", None),
    ("http://[::1]:8428/api/v1/write", None),
    ("https://vm.example/api/v1/write", None),
])
async def test_plain_http_to_another_host_is_logged_once_at_start(
        caplog: pytest.LogCaptureFixture, url: str, shown: str | None) -> None:
    """Metrics over http:// past this machine: one warning naming the exporter, the URL
    (without its password) and how to turn TLS on."""
    caplog.set_level(logging.WARNING)
    exporter = RemoteWriteExporter(config=RemoteWriteConfig(url=url, name="vm"))
    warnings = [r for r in caplog.records if "unencrypted" in r.getMessage()]
    assert len(warnings) == (shown is not None), [r.getMessage() for r in caplog.records]
    if shown is not None:
        message = warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING
        assert message.startswith(f"exporter vm sends metrics to {shown} unencrypted")
        for key in ("https://", "ca_file", "cert_file", "key_file", "server_name"):
            assert key in message, key
        assert "secret" not in message and "secret" not in str(
            warnings[0].fields)  # type: ignore[attr-defined]
    await exporter.shutdown()


# The config file: the same checks, the message naming the exporter's key.


def load(tmp_path: Path, exporter: str) -> ConfigError:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  exporters:\n    - name: vm\n" + "".join(
        f"      {line}\n" for line in exporter.strip().splitlines()))
    with pytest.raises(ConfigError) as caught:
        load_service_config(path, "metrics-pipeline", environ={})
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    return caught.value


def test_the_config_file_reads_the_tls_keys(tmp_path: Path, files: Files) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
pipeline:
  exporters:
    - name: vm
      type: remote-write
      endpoint: {HTTPS}
      ca_file: {files.ca}
      cert_file: {files.cert}
      key_file: {files.key}
      server_name: backend.internal
""")
    (exporter,) = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert (exporter.ca_file, exporter.cert_file, exporter.key_file, exporter.server_name,
            exporter.insecure_skip_verify) == (files.ca, files.cert, files.key,
                                               "backend.internal", False)


def test_the_config_file_names_the_exporter_key(tmp_path: Path, files: Files) -> None:
    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTPS}\nca_file: {files.missing}")
    assert error.key == "pipeline.exporters[0].ca_file"
    assert (f"pipeline.exporters[0].ca_file: '{files.missing}' cannot be read: No such file "
            "or directory") in str(error)

    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTPS}\n"
                           f"cert_file: {files.cert}\nkey_file: {files.other_key}")
    assert "pipeline.exporters[0].key_file: " in str(error)
    assert "is not the private key of the certificate" in str(error)

    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTP}\ncert_file: {files.cert}\n"
                           f"key_file: {files.key}")
    assert "pipeline.exporters[0].cert_file: is a TLS option, but" in str(error)

    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTPS}\ncert_file: {files.cert}")
    assert "pipeline.exporters[0].key_file: is missing" in str(error)

    # otlp takes the files too (tests/unit/test_export_otlp_tls_config.py), read the same way.
    error = load(tmp_path, f"type: otlp\nendpoint: 127.0.0.1:4317\nca_file: {files.missing}")
    assert (f"pipeline.exporters[0].ca_file: '{files.missing}' cannot be read: No such file "
            "or directory") in str(error)

    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTPS}\n"
                           "insecure_skip_verify: maybe")
    assert ("pipeline.exporters[0].insecure_skip_verify: 'maybe' is not a boolean; "
            "use true or false") in str(error)

    error = load(tmp_path, f"type: remote-write\nendpoint: {HTTPS}\ntls_ca_file: ca.pem")
    assert "unknown key pipeline.exporters[0].tls_ca_file; allowed keys at " in str(error)
    assert "ca_file, cert_file, concurrency" in str(error)

"""The OTLP/gRPC exporter's TLS options: when it uses TLS, and each bad input stopping the start
with its own message, from ``OtlpExporterConfig``, from the exporter (which reads the files)
and from the config file. The file checks are remote-write's (client_tls), so the bad files
and their messages are the ones test_export_tls_config.py lists.

Certificates come from the repository's local CA; nothing connects.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from phoenixcp.errors import ConfigError
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.export import OtlpExporter, OtlpExporterConfig
from tests.unit.test_export_tls_config import Files, bad_files

pytestmark = pytest.mark.unit

TARGET = "127.0.0.1:4317"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("tls-files"))


@pytest.mark.parametrize(("options", "tls"), [
    ({}, False),  # as before TLS options existed: existing configs stay plaintext
    ({"insecure": True}, False),
    ({"insecure": False}, True),  # TLS against grpcio's roots
    ({"ca_file": "ca.pem"}, True),
    ({"cert_file": "c.pem", "key_file": "c.key"}, True),
    ({"server_name": "collector.internal"}, True),
    ({"insecure": False, "ca_file": "ca.pem"}, True),
])
def test_tls_is_on_when_asked_for_or_when_a_tls_option_is_set(options: dict[str, object],
                                                              tls: bool) -> None:
    assert OtlpExporterConfig(target=TARGET, **options).tls is tls  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "key", "message"), [
    ({"insecure": True, "ca_file": "ca.pem"}, "ca_file",
     "export.ca_file: is a TLS option, but insecure is true (plaintext); drop insecure (TLS is "
     "on when a TLS option is set) or drop the TLS options"),
    ({"insecure": True, "cert_file": "c.pem", "key_file": "c.key"}, "cert_file",
     "export.cert_file: is a TLS option, but insecure is true (plaintext)"),
    ({"insecure": True, "server_name": "collector"}, "server_name",
     "export.server_name: is a TLS option, but insecure is true"),
    ({"cert_file": "c.pem"}, "key_file",
     "export.key_file: is missing: cert_file needs its private key in key_file (set both or "
     "neither)"),
    ({"key_file": "c.key"}, "cert_file",
     "export.cert_file: is missing: key_file needs its certificate in cert_file"),
    ({"ca_file": ""}, "ca_file", "export.ca_file: is empty; leave it out"),
    ({"server_name": " "}, "server_name", "export.server_name: is empty"),
])
def test_options_that_cannot_work_are_refused_by_the_config(
        options: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OtlpExporterConfig(target=TARGET, **options)  # type: ignore[arg-type]
    assert caught.value.key == key
    assert message in str(caught.value)


def test_files_that_cannot_be_used_stop_the_exporter_at_construction(files: Files) -> None:
    for options, key, message in bad_files(files):
        # The config reads no file; the exporter does.
        config = OtlpExporterConfig(target=TARGET, **options)  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as caught:
            OtlpExporter(config=config)
        assert (caught.value.key, message in str(caught.value)) == (key, True), (
            options, str(caught.value))


async def test_good_files_make_an_exporter(files: Files) -> None:
    exporter = OtlpExporter(config=OtlpExporterConfig(
        target=TARGET, ca_file=files.ca, cert_file=files.cert, key_file=files.key,
        server_name="collector.internal"))
    await exporter.shutdown()


@pytest.mark.parametrize(("target", "options", "warned"), [
    ("collector.example:4317", {}, True),
    ("10.0.0.7:4317", {"insecure": True}, True),
    ("[2001:db8::1]:4317", {}, True),
    ("unixbox:4317", {}, True),
    ("127.0.0.1:4317", {}, False),
    ("127.8.9.10:4317", {}, False),
    ("localhost:4317", {}, False),
    ("LOCALHOST.:4317", {}, False),
    ("otel.localhost:4317", {}, False),
    ("[::1]:4317", {}, False),
    ("unix:/run/otel.sock", {}, False),
    ("collector.example:4317", {"insecure": False}, False),  # TLS
])
async def test_plaintext_to_another_host_is_logged_once_at_start(
        caplog: pytest.LogCaptureFixture, target: str, options: dict[str, object],
        warned: bool) -> None:
    """Metrics in plaintext past this machine: one warning naming the exporter, the target,
    and the keys that turn TLS on."""
    caplog.set_level(logging.WARNING)
    exporter = OtlpExporter(config=OtlpExporterConfig(target=target, name="collector",
                                                      **options))  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if "unencrypted" in r.getMessage()]
    assert len(warnings) == warned, [r.getMessage() for r in caplog.records]
    if warned:
        message = warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING
        assert message.startswith(f"exporter collector sends metrics to {target} unencrypted")
        for key in ("ca_file", "cert_file", "key_file", "server_name", "insecure: false"):
            assert key in message, key
        assert warnings[0].fields == {  # type: ignore[attr-defined]
            "exporter": "collector", "target": target}
    await exporter.shutdown()


# The config file: the same checks, the message naming the exporter's key.


def write(tmp_path: Path, exporter: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  exporters:\n    - name: collector\n" + "".join(
        f"      {line}\n" for line in exporter.strip().splitlines()))
    return path


def load_error(tmp_path: Path, exporter: str) -> ConfigError:
    path = write(tmp_path, exporter)
    with pytest.raises(ConfigError) as caught:
        load_service_config(path, "metrics-pipeline", environ={})
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    return caught.value


def test_the_config_file_reads_the_tls_keys(tmp_path: Path, files: Files) -> None:
    path = write(tmp_path, f"""
type: otlp
endpoint: {TARGET}
ca_file: {files.ca}
cert_file: {files.cert}
key_file: {files.key}
server_name: collector.internal
""")
    (exporter,) = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert (exporter.insecure, exporter.ca_file, exporter.cert_file, exporter.key_file,
            exporter.server_name) == (None, files.ca, files.cert, files.key,
                                      "collector.internal")

    path = write(tmp_path, f"type: otlp\nendpoint: {TARGET}")
    (exporter,) = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert (exporter.insecure, exporter.ca_file) == (None, None)  # plaintext, as before

    path = write(tmp_path, f"type: otlp\nendpoint: {TARGET}\ninsecure: false")
    (exporter,) = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert exporter.insecure is False


def test_the_config_file_names_the_exporter_key(tmp_path: Path, files: Files) -> None:
    otlp = f"type: otlp\nendpoint: {TARGET}\n"
    error = load_error(tmp_path, otlp + f"insecure: true\nca_file: {files.ca}")
    assert error.key == "pipeline.exporters[0].ca_file"
    assert ("pipeline.exporters[0].ca_file: is a TLS option, but insecure is true "
            "(plaintext); drop insecure (TLS is on when a TLS option is set) or drop the TLS "
            "options") in str(error)

    error = load_error(tmp_path, otlp + f"cert_file: {files.cert}")
    assert "pipeline.exporters[0].key_file: is missing" in str(error)

    error = load_error(tmp_path, otlp + "insecure_skip_verify: true")
    assert ("pipeline.exporters[0].insecure_skip_verify: is an option of type remote-write; "
            "an otlp exporter always verifies the receiver's certificate: give its CA in "
            "ca_file, or use insecure: true for plaintext") in str(error)

    error = load_error(tmp_path, otlp + "insecure: maybe")
    assert "pipeline.exporters[0].insecure: 'maybe' is not a boolean" in str(error)

    error = load_error(tmp_path, "type: remote-write\n"
                                 "endpoint: http://127.0.0.1:8428/api/v1/write\n"
                                 "insecure: false")
    assert ("pipeline.exporters[0].insecure: is an option of type otlp; a remote-write "
            "exporter uses TLS when its endpoint is https://") in str(error)

    error = load_error(tmp_path, "type: otlp\nendpoint: https://collector:4317")
    assert ("pipeline.exporters[0].endpoint: 'https://collector:4317': give host:port for "
            "otlp (TLS is on with ca_file or insecure: false, not by a scheme)") in str(error)


def test_the_config_file_reads_the_files(tmp_path: Path, files: Files) -> None:
    for options, key, message in bad_files(files):
        error = load_error(tmp_path, f"type: otlp\nendpoint: {TARGET}\n" + "".join(
            f"{name}: {value}\n" for name, value in options.items()))
        assert error.key == f"pipeline.exporters[0].{key}", (options, str(error))
        assert message.replace("export.", "pipeline.exporters[0].", 1) in str(error), (
            options, str(error))

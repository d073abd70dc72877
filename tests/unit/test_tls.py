"""The local CA: certificate shape, persistence, and safe concurrent creation."""

from __future__ import annotations

import datetime as dt
import ipaddress
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509

from phoenixcp.errors import ConfigError
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.unit


def test_issued_certificate_shape(tmp_path: Path) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    bundle = ca.issue("cost-optimizer", ttl=dt.timedelta(hours=2))
    cert = bundle.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://phoenix/cost-optimizer"
    ]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=59) < lifetime <= dt.timedelta(hours=2)
    assert bundle.spiffe_id == "spiffe://phoenix/cost-optimizer"
    ca_cert = x509.load_pem_x509_certificate(bundle.ca_pem)
    cert.verify_directly_issued_by(ca_cert)


def test_ca_persists_and_key_is_private(tmp_path: Path) -> None:
    first = LocalCA.open(tmp_path / "ca")
    second = LocalCA.open(tmp_path / "ca")
    assert first.ca_pem == second.ca_pem
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0


def test_open_without_create_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="phoenixctl up"):
        LocalCA.open(tmp_path / "missing", create=False)


def _open(path: str) -> bytes:
    return LocalCA.open(Path(path)).ca_pem


def test_concurrent_creation_yields_one_ca(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        pems = set(pool.map(_open, [str(tmp_path / "ca")] * 8))
    assert len(pems) == 1

"""Which C extensions the pipeline runs, on /metrics and in its start-up log."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from metrics_pipeline import native


def test_an_installed_checkout_runs_every_c_extension() -> None:
    """`pip install -e .` (what `make test` runs first) builds them all; a twin running here
    means a build step went missing."""
    assert native.native_parts() == dict.fromkeys(native.native_parts(), True)


def test_a_missing_extension_shows_on_metrics_and_in_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(native, "CONVERTER", "python")
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="metrics_pipeline.native"):
        native.report_native_parts(registry)
    value = registry.get_sample_value
    assert value("phoenix_pipeline_native_code", {"part": "otlp_converter"}) == 0
    assert value("phoenix_pipeline_native_code", {"part": "remote_write_scanner"}) == 1
    [record] = caplog.records
    assert "pure-Python twins run" in record.getMessage()
    assert record.fields == {"parts": ["otlp_converter"]}  # type: ignore[attr-defined]

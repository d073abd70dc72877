"""``max_batch_samples`` of a pipeline exporter: unset, it is 10,000 for remote-write (as
vmagent's ``-remoteWrite.maxRowsPerBlock``) and 2,000 for otlp; set, it is kept; out of range,
the config file is refused with the key and the allowed range (ADR 0006)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenixcp.errors import ConfigError
from phoenixcp.platform.config import load_service_config

pytestmark = pytest.mark.unit


def exporters(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  exporters:\n" + "".join(f"    {line}\n" for line in lines))
    return path


def test_unset_batch_size_depends_on_the_exporter_type(tmp_path: Path) -> None:
    path = exporters(tmp_path,
                     "- {name: vm, type: remote-write, endpoint: 'http://127.0.0.1:8428/api/v1/write'}",
                     "- {name: col, type: otlp, endpoint: '127.0.0.1:4317', insecure: true}")
    vm, col = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert (vm.max_batch_samples, vm.batch_samples) == (None, 10_000)
    assert (col.max_batch_samples, col.batch_samples) == (None, 2_000)


def test_a_set_batch_size_is_kept(tmp_path: Path) -> None:
    path = exporters(tmp_path, "- {name: vm, type: remote-write, max_batch_samples: 500, "
                               "endpoint: 'http://127.0.0.1:8428/api/v1/write'}")
    (vm,) = load_service_config(path, "metrics-pipeline", environ={}).pipeline.exporters
    assert vm.batch_samples == 500


@pytest.mark.parametrize("value", [0, 1_000_001])
def test_an_out_of_range_batch_size_is_refused(tmp_path: Path, value: int) -> None:
    path = exporters(tmp_path, f"- {{name: vm, type: remote-write, max_batch_samples: {value}, "
                               "endpoint: 'http://127.0.0.1:8428/api/v1/write'}")
    with pytest.raises(ConfigError) as caught:
        load_service_config(path, "metrics-pipeline", environ={})
    assert caught.value.key == "pipeline.exporters[0].max_batch_samples"
    assert f"{value} is out of range; use 1 to 1000000" in str(caught.value)

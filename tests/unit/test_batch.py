"""The internal batch format (phoenixcp.core.batch)."""

from __future__ import annotations

import numpy as np
import pytest

from phoenixcp.core.batch import BatchColumns, ColumnsDecoder, MetricBatch, MetricType

pytestmark = pytest.mark.unit


def _columns(calls: list[bytes]) -> ColumnsDecoder:
    def decode(data: bytes) -> BatchColumns:
        calls.append(data)
        return BatchColumns(
            series_index=np.array([0, 0], dtype=np.int32),
            timestamps=np.array([1, 2], dtype=np.int64),
            values=np.array([1.0, 2.0]),
            label_sets=((("__name__", "up"),),),
            metric_types={"up": MetricType.GAUGE},
        )

    return decode


def test_counts_and_lazy_columns_decoded_once() -> None:
    calls: list[bytes] = []
    batch = MetricBatch(
        tenant="t1", write_request=b"wr", series_keys=np.array([7], dtype=np.uint64),
        sample_count=2, received_at=5, decoder=_columns(calls),
    )
    assert batch.series_count == 1 and batch.nbytes == 2
    assert calls == []
    cols = batch.columns()
    assert batch.columns() is cols and calls == [b"wr"]
    assert len(cols) == 2 and cols.metric_types["up"] is MetricType.GAUGE


def test_batch_is_immutable_and_needs_a_decoder_for_columns() -> None:
    batch = MetricBatch(tenant="t", write_request=b"", series_keys=np.zeros(0, np.uint64),
                        sample_count=0, received_at=0)
    with pytest.raises(AttributeError):
        batch.tenant = "x"  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="no columns decoder"):
        batch.columns()

"""Label reduction: which output series an input merges into."""

from __future__ import annotations

import pytest

from phoenixcp.core import aggregation
from phoenixcp.core.aggregation import LabelReduction

pytestmark = pytest.mark.unit

SERIES = (("__name__", "lat_bucket"), ("user_id", "7"), ("job", "api"), ("le", "0.5"),
          ("zone", ""))


def test_without_removes_the_named_labels_and_sorts() -> None:
    assert LabelReduction(without=("user_id",)).apply(SERIES) == (
        ("__name__", "lat_bucket"), ("job", "api"), ("le", "0.5"))


def test_by_keeps_the_named_labels_plus_name_le_and_quantile() -> None:
    assert LabelReduction(by=("job",)).apply(SERIES) == (
        ("__name__", "lat_bucket"), ("job", "api"), ("le", "0.5"))
    assert LabelReduction(by=("zone",)).apply(SERIES) == (
        ("__name__", "lat_bucket"), ("le", "0.5"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of `by` and `without`"),
    ({"by": ("a",), "without": ("b",)}, "exactly one of `by` and `without`"),
    ({"without": ("le",)}, "cannot be removed"),
    ({"by": ("1bad",)}, "does not match"),
    ({"without": ("__meta",)}, "reserved"),
])
def test_bad_reductions_are_refused(kwargs: dict[str, tuple[str, ...]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelReduction(**kwargs)


def test_all_matches_the_public_names() -> None:
    public = {n for n in dir(aggregation) if not n.startswith("_")} - {"annotations"}
    assert set(aggregation.__all__) == public

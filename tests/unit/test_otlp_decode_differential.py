"""decode_otlp against the implementation it replaced (tests/unit/_otlp_oracle.py) on random
requests: the same WriteRequest bytes and the same partial success, or the same exception.

Where the output was meant to change since (:func:`fixed_since_the_oracle`), the converters
are checked against each other only."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import _otlpconvert_py, otlp
from phoenixcp.platform.ingest.otlp import decode_otlp
from tests.unit import _otlp_corpus as corpus
from tests.unit import _otlp_oracle as oracle

pytestmark = pytest.mark.unit

CONVERTERS: dict[str, otlp.Converter] = {"python": _otlpconvert_py.convert}
if otlp.CONVERTER == "c":
    CONVERTERS["c"] = otlp._convert


def outcomes(req: ExportMetricsServiceRequest) -> dict[str, Any]:
    """Per converter, what decode_otlp gave; and the oracle's, under "oracle", its refusal of
    bucket counts that do not fit their bounds worded as now."""
    out = {"oracle": corpus.outcome(oracle.decode_otlp, req)}
    out["oracle"]["message"] = out["oracle"]["message"].replace(
        "(needs bounds + 1, bounds increasing)", "(send bounds + 1 bucket counts, or neither "
        "bounds nor bucket counts for count and sum only)")
    for name, converter in CONVERTERS.items():
        out[name] = corpus.outcome(
            lambda r, c=converter, **kw: decode_otlp(r, converter=c, **kw), req)
    return out

def fixed_since_the_oracle(req: ExportMetricsServiceRequest) -> bool:
    """Whether ``req`` has a histogram point the oracle got wrong, kept as it was: bounds
    without bucket counts (it raised ValueError; now a refused point), a +Inf or NaN bound
    (it wrote two le="+Inf" samples or an le="NaN" bucket; now the +Inf bound is dropped and
    a NaN bound refused), and bounds not increasing (it blamed the bucket counts, for every
    refused point of the metric; now the bounds are named). ADR 0013."""
    return any(
        (p.explicit_bounds and not p.bucket_counts)
        or any(b != b or b == INF for b in p.explicit_bounds)
        or any(not b < c for b, c in pairwise(p.explicit_bounds))
        for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        for p in m.histogram.data_points)


INF = float("inf")
# Few distinct keys and values, so that label sets, series and collisions repeat.
KEYS = st.sampled_from(["a", "a.b", "a-b", "a_b", "1st", "__x", "", "job", "instance", "le",
                        "quantile", "Zeta", "ключ", "k"])
TEXT = st.sampled_from(["", "x", "y", "GET", "значение", "a;b"])
VALUES = st.one_of(TEXT, st.booleans(), st.integers(-3, 3),
                   st.sampled_from([0.0, -0.0, 0.5, 1e20, float("nan")]),
                   st.sampled_from([b"", b"\x01"]), st.lists(TEXT, max_size=2),
                   st.dictionaries(st.sampled_from(["p", "q"]), TEXT, max_size=2),
                   st.none())
ATTRS = st.lists(st.tuples(KEYS, VALUES), max_size=4)
NAMES = st.sampled_from(["m", "m.x", "m_x", "9m", "...", "", "req.total", "d"])
UNITS = st.sampled_from(["", "1", "s", "By/s", "{r}"])
NUMBERS = st.one_of(st.integers(-(2**63), 2**63 - 1),
                    st.sampled_from([0.0, -0.0, 1.5, -2.0, float("nan"), float("inf")]))
TS = st.sampled_from([0, 999_999, corpus.T_NS, corpus.T_NS + 15_000_000_000, 2**64 - 1])
FLAGS = st.sampled_from([0, 0, 1, 2, 3])
TEMPORALITY = st.sampled_from([corpus.CUMULATIVE, corpus.CUMULATIVE, corpus.DELTA, 0])
BOUNDS = st.sampled_from([[], [1.0], [0.5, 1.0, 2.5], [-0.0, 1.0], [0.0, 1.0], [2.0, 1.0],
                          [1e-7, 0.1 + 0.2, 1e21], [0.5, INF], [INF], [float("nan")]])


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    m = Metric(name=draw(NAMES), unit=draw(UNITS), description=draw(TEXT))
    kind = draw(st.sampled_from(["gauge", "sum", "histogram", "summary", "exp", "none"]))
    for _ in range(draw(st.integers(0, 3))):
        attrs = corpus.kvs(draw(ATTRS))
        ts, flags = draw(TS), draw(FLAGS)
        if kind in ("gauge", "sum"):
            data: Any = m.gauge if kind == "gauge" else m.sum
            p = data.data_points.add(time_unix_nano=ts, flags=flags, attributes=attrs)
            value = draw(NUMBERS)
            if isinstance(value, int):
                p.as_int = value
            else:
                p.as_double = value
        elif kind == "histogram":
            bounds = draw(BOUNDS)
            n = draw(st.sampled_from([len(bounds) + 1, len(bounds) + 1, 0, len(bounds)]))
            counts = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
            p = m.histogram.data_points.add(time_unix_nano=ts, flags=flags, attributes=attrs,
                                            explicit_bounds=bounds, bucket_counts=counts,
                                            count=draw(st.integers(0, 2**40)))
            if draw(st.booleans()):
                p.sum = draw(st.sampled_from([0.0, 2.5, float("nan")]))
        elif kind == "summary":
            p = m.summary.data_points.add(time_unix_nano=ts, flags=flags, attributes=attrs,
                                          count=draw(st.integers(0, 9)),
                                          sum=draw(st.sampled_from([0.0, 1.5])))
            for q in draw(st.lists(st.sampled_from([0.0, 0.5, 0.99, 1.0]), max_size=3)):
                p.quantile_values.add(quantile=q, value=draw(NUMBERS.filter(
                    lambda v: isinstance(v, float))))
        elif kind == "exp":
            m.exponential_histogram.data_points.add(count=1, time_unix_nano=ts)
    if kind == "sum":
        m.sum.is_monotonic = draw(st.booleans())
        m.sum.aggregation_temporality = draw(TEMPORALITY)  # type: ignore[assignment]
    elif kind == "histogram":
        m.histogram.aggregation_temporality = draw(TEMPORALITY)  # type: ignore[assignment]
    elif kind == "exp":
        m.exponential_histogram.aggregation_temporality = corpus.CUMULATIVE
    return m


RESOURCES = st.lists(st.tuples(st.sampled_from(["service.name", "service.namespace",
                                                 "service.instance.id", "host"]),
                               st.one_of(TEXT, st.integers(0, 2))), max_size=3)


@st.composite
def requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend(corpus.kvs(draw(RESOURCES)))
        for _ in range(draw(st.integers(0, 2))):
            rm.scope_metrics.add(metrics=draw(st.lists(metrics(), max_size=4)))
    return req


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_same_output_as_the_replaced_implementation(req: ExportMetricsServiceRequest) -> None:
    got = outcomes(req)
    want = got.pop("oracle")
    if fixed_since_the_oracle(req):
        want = got.pop("python")
    for name, outcome in got.items():
        assert outcome == want, name


def test_edge_corpus_matches_the_replaced_implementation() -> None:
    for case, req in corpus.edge_requests().items():
        got = outcomes(req)
        want = got.pop("oracle")
        if fixed_since_the_oracle(req):
            want = got.pop("python")
        for name, outcome in got.items():
            assert outcome == want, (case, name)


#: Byte sequences that are not UTF-8: a byte never used, an overlong NUL, a surrogate, a
#: character cut short. Each is bad from its first byte.
NOT_UTF8 = st.sampled_from([b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82",
                            b"\xf4\x90\x80\x80"])
#: Text without the placeholders "#" and "$" that mark where the bad bytes go.
PLAIN = st.text(st.characters(blacklist_characters="#$", blacklist_categories=["Cs"]),
                max_size=40)
STRING_FIELDS = {
    "name": "metric name", "description": "the description of metric 'm'",
    "unit": "the unit of metric 'm'", "key": "an attribute key of metric 'm'",
    "value": "the value of attribute 'k' of metric 'm'",
    "resource": "the value of attribute 'host' of the resource",
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STRING_FIELDS)), PLAIN, NOT_UTF8, PLAIN)
def test_the_converters_refuse_a_string_that_is_not_utf8_alike(
        field: str, before: str, bad: bytes, after: str) -> None:
    """Wherever a string is not UTF-8, both converters refuse the request with the same words:
    which string, the first bad byte and its offset, the text before it (at most 32 bytes),
    and what OTLP allows."""
    def serialized(placeholder: str) -> bytes:
        text = {name: "m" if name == "name" else "k" if name == "key" else "x"
                for name in STRING_FIELDS}
        text[field] = before + placeholder * len(bad) + after
        return corpus.request(
            corpus.gauge(text["name"], (1.0, [(text["key"], text["value"])]),
                         unit=text["unit"], description=text["description"]),
            resource=[("host", text["resource"])]).SerializeToString()

    # Two placeholders of one length: the bytes where the bodies differ are theirs.
    body, other = serialized("#"), serialized("$")
    (start, *_) = differ = [i for i, (x, y) in enumerate(zip(body, other, strict=True))
                            if x != y]
    assert differ == list(range(start, start + len(bad)))
    body = body[:start] + bad + body[start + len(bad):]
    messages = set()
    for converter in CONVERTERS.values():
        with pytest.raises(InvalidArgument) as caught:
            decode_otlp(body, tenant="t", converter=converter)
        messages.add(str(caught.value))
    (message,) = messages
    at = len(before.encode())
    shown = before.encode()[max(0, at - 32):].decode("utf-8", "ignore")
    where = f", after {('...' if at > 32 else '') + shown!r}" if at else ""
    assert message == ("the request is not a valid OTLP ExportMetricsServiceRequest: "
                       f"{STRING_FIELDS[field]} is not valid UTF-8 (byte 0x{bad[0]:02x} at "
                       f"offset {at}{where}); OTLP strings must be UTF-8")


@pytest.mark.skipif(otlp.CONVERTER != "c", reason="the C converter is not built")
@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_the_c_converter_survives_corrupted_requests(req: ExportMetricsServiceRequest,
                                                     data: st.DataObject) -> None:
    """The input is upb's own output, but the walker checks every read: truncated or altered
    bytes give an answer or an exception, never a crash (run under ASan when changing it)."""
    body = bytearray(req.SerializeToString() or b"\x0a\x00")
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    for sample in (bytes(body), bytes(body[:cut])):
        try:
            otlp._convert(sample, otlp._Translation())
        except Exception:  # any exception is an answer; a crash is not
            pass
        for converter in CONVERTERS.values():
            try:  # what gRPC hands the servicer: bad bytes are the client's error, never a 5xx
                decode_otlp(sample, tenant="t", converter=converter)
            except InvalidArgument:
                pass

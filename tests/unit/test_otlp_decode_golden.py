"""decode_otlp's output, byte for byte, against a golden file made before its rewrite.

tests/unit/data/otlp_decode_golden.json holds, per request of the corpus (tests/unit/
_otlp_corpus.py: the benchmark's first round and hand-written edge cases), the WriteRequest
bytes' SHA-256 (and hex when small), sample and series counts, and the partial success. It
was written by the implementation before commit "otlp decode: ..." (the per-point Python
loop over upb messages), except ``histograms`` and ``histogram_bounds``, rewritten when
histogram bounds without counts became a refusal and an explicit +Inf bound one bucket, and
when refused bounds got a message of their own (ADR 0013). Regenerate it only when the
output is meant to change, and then only those entries:

    .venv/bin/python -m tests.unit.test_otlp_decode_golden --write
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.ingest import _otlpconvert_py, otlp
from phoenixcp.platform.ingest.otlp import decode_otlp
from phoenixcp.platform.ingest.otlp_http import decode_otlp_http
from tests.unit import _otlp_corpus as otlp_corpus

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent / "data" / "otlp_decode_golden.json"
CONVERTERS: dict[str, otlp.Converter] = {"python": _otlpconvert_py.convert}
if otlp.CONVERTER == "c":
    CONVERTERS["c"] = otlp._convert


def corpus() -> dict[str, ExportMetricsServiceRequest]:
    out = otlp_corpus.edge_requests()
    for name, body in otlp_corpus.bench_requests():
        out[name] = ExportMetricsServiceRequest.FromString(body)
    return out


def outcomes(converter: otlp.Converter | None = None) -> dict[str, dict[str, Any]]:
    def decode(req: ExportMetricsServiceRequest, **kw: Any) -> Any:
        return decode_otlp(req, converter=converter, **kw)

    return {name: otlp_corpus.outcome(decode, req) for name, req in corpus().items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, Any]]:
    return dict(json.loads(GOLDEN.read_text()))


def test_the_c_converter_is_built() -> None:
    """CI builds the extension (pyproject.toml): a silent fallback to the twin would cost
    ~20x the CPU per data point."""
    assert otlp.CONVERTER == "c"


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_every_request_decodes_as_before(golden: dict[str, dict[str, Any]],
                                         converter: str) -> None:
    got = outcomes(CONVERTERS[converter])
    assert sorted(got) == sorted(golden)
    for name in golden:
        assert got[name] == golden[name], name


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
def test_the_serialized_request_decodes_as_the_parsed_one(golden: dict[str, dict[str, Any]],
                                                         converter: str) -> None:
    """What gRPC hands the servicer: the request's bytes, not parsed."""
    def decode(req: ExportMetricsServiceRequest, **kw: Any) -> Any:
        return decode_otlp(req.SerializeToString(), converter=CONVERTERS[converter], **kw)

    for name, req in corpus().items():
        assert otlp_corpus.outcome(decode, req) == golden[name], name


@pytest.mark.parametrize("gzipped", [False, True])
def test_otlp_http_bodies_decode_as_grpc_requests(golden: dict[str, dict[str, Any]],
                                                  gzipped: bool) -> None:
    """OTLP/HTTP hands the (inflated) body to decode_otlp as the gRPC receiver hands it the
    request: the same batch and partial success."""
    def decode(req: ExportMetricsServiceRequest, **kw: Any) -> Any:
        body = req.SerializeToString()
        return decode_otlp_http(gzip.compress(body) if gzipped else body,
                                content_type="application/x-protobuf",
                                content_encoding="gzip" if gzipped else None, **kw)

    for name, req in corpus().items():
        assert otlp_corpus.outcome(decode, req) == golden[name], name


@pytest.mark.parametrize("body", [
    b"\x0a\x05\x0a\x03\x0a\x01",  # truncated
    b"\x0f",  # a wire type protobuf does not have
    otlp_corpus.request(otlp_corpus.gauge("g", (1.0, [("k", "v")]))).SerializeToString()
    .replace(b"\x01v", b"\x01\xff"),  # an attribute value that is not UTF-8
    otlp_corpus.request(otlp_corpus.gauge("g", (1.0, []))).SerializeToString()
    .replace(b"\x01g", b"\x01\xff"),  # a metric name that is not UTF-8
])
def test_otlp_http_refuses_what_grpc_refuses_with_the_same_message(body: bytes) -> None:
    """OTLP/HTTP answers 400 with this message, OTLP/gRPC INVALID_ARGUMENT with it."""
    with pytest.raises(InvalidArgument) as by_grpc:
        decode_otlp(body, tenant="t")
    with pytest.raises(InvalidArgument) as by_http:
        decode_otlp_http(body, tenant="t", content_type="application/x-protobuf")
    assert str(by_http.value) == str(by_grpc.value)
    assert str(by_http.value).startswith(
        "the request is not a valid OTLP ExportMetricsServiceRequest: ")
    assert by_http.value.field is None  # 400, not 415


def test_non_utf8_is_refused() -> None:
    """An attribute value with bad UTF-8 refuses the request, naming the problem and where
    (OTLP/HTTP 400, OTLP/gRPC INVALID_ARGUMENT)."""
    req = otlp_corpus.request(otlp_corpus.gauge("g", (1.0, [("k", "v")])))
    body = req.SerializeToString().replace(b"\x01v", b"\x01\xff")
    with pytest.raises(InvalidArgument) as caught:
        decode_otlp_http(body, tenant="t", content_type="application/x-protobuf")
    assert str(caught.value) == (
        "the request is not a valid OTLP ExportMetricsServiceRequest: the value of attribute "
        "'k' of metric 'g' is not valid UTF-8 (byte 0xff at offset 0); OTLP strings must be "
        "UTF-8")


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize(("body", "needle"), [
    (b"\x0a\x05\x0a\x03\x0a\x01", "length past the end"),  # truncated
    (b"\x0a\x80", "truncated varint"),
    (b"\x0f", "wire type"),
])
def test_bytes_that_are_not_a_request_are_invalid_argument(converter: str, body: bytes,
                                                           needle: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_otlp(body, tenant="t", converter=CONVERTERS[converter])
    message = str(caught.value)
    assert message.startswith("the request is not a valid OTLP ExportMetricsServiceRequest: ")
    if converter == "c":
        assert needle in message, message


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize(("where", "refusal"), [
    # é cut short: its first byte is the bad one
    (b"\x04mm\xc3\xa9", "metric name is not valid UTF-8 (byte 0xc3 at offset 2, after 'mm')"),
    (b"\x02dd", "the description of metric 'mmé' is not valid UTF-8 (byte 0xff at offset 1, "
                "after 'd')"),
    (b"\x02uu", "the unit of metric 'mmé' is not valid UTF-8 (byte 0xff at offset 1, after 'u')"),
    (b"\x01k", "an attribute key of metric 'mmé' is not valid UTF-8 (byte 0xff at offset 0)"),
    (b"\x01v", "the value of attribute 'k' of metric 'mmé' is not valid UTF-8 (byte 0xff at "
               "offset 0)"),
    (b"\x02in", "the value of attribute 'list' of metric 'mmé' is not valid UTF-8 (byte 0xff at "
                "offset 1, after 'i')"),
    (b"\x01s", "the value of attribute 'service.name' of the resource is not valid UTF-8 (byte "
               "0xff at offset 0)"),
    (b"\x02rk", "an attribute key of the resource is not valid UTF-8 (byte 0xff at offset 1, "
                "after 'r')"),
])
def test_bad_utf8_says_which_string_and_what_is_allowed(converter: str, where: bytes,
                                                        refusal: str) -> None:
    """Each string that is read (a metric's name, description and unit; an attribute's key
    and value, nested values too; the resource's) is checked, and a bad one refuses the whole
    request (INVALID_ARGUMENT, 400) naming it, its first bad byte and the text before it."""
    req = otlp_corpus.request(
        otlp_corpus.gauge("mmé", (1.0, [("k", "v"), ("list", ["in"])]), unit="uu",
                          description="dd"),
        resource=[("service.name", "s"), ("rk", "x")])
    body = req.SerializeToString()
    assert body.count(where) == 1
    with pytest.raises(InvalidArgument) as caught:
        decode_otlp(body.replace(where, where[:-1] + b"\xff"), tenant="t",
                    converter=CONVERTERS[converter])
    assert str(caught.value) == ("the request is not a valid OTLP ExportMetricsServiceRequest: "
                                 f"{refusal}; OTLP strings must be UTF-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.unit.test_otlp_decode_golden --write")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(outcomes(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")

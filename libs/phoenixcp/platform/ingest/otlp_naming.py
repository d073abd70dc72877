"""OTLP → Prometheus names, per OpenTelemetry's "Prometheus and OpenMetrics Compatibility".

Behaves as the OpenTelemetry Collector's Prometheus exporters do with suffixes enabled and
UTF-8 names off: metric names are split into tokens at every character other than
``[A-Za-z0-9:]`` and joined with ``_`` (so invalid characters become ``_`` and runs of ``_``
collapse); the unit is appended unless already a token (``s`` → ``seconds``, ``By/s`` →
``bytes_per_second``, ``{requests}`` annotations dropped); monotonic cumulative sums end in
``_total``; gauges with unit ``1`` end in ``_ratio``; a leading digit gets a ``_`` prefix.
Label names get ``_`` for each invalid character and ``key_`` before a leading digit; a
leading ``__`` (reserved in Prometheus) becomes ``key__``. Pure functions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["attribute_labels", "label_name", "metric_name", "unit_name"]

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes",
    "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes",
    "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes", "m": "meters", "V": "volts",
    "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week",
              "mo": "month", "y": "year"}
_TOKEN_SPLIT = re.compile(r"[^A-Za-z0-9:]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_]")
_ANNOTATION = re.compile(r"\{[^}]*\}")


@functools.lru_cache(maxsize=1024)  # a few units per process
def unit_name(unit: str) -> tuple[str, str]:
    """(main unit, per unit) in Prometheus words: ``"By/s"`` → ``("bytes", "second")``."""
    unit = _ANNOTATION.sub("", unit).strip()
    if not unit or unit == "1":
        return "", ""
    main, _, per = unit.partition("/")
    main_word = _UNITS.get(main.strip(), main.strip())
    per_word = _PER_UNITS.get(per.strip(), per.strip())
    return _joined(main_word), _joined(per_word)


def _joined(text: str) -> str:
    return "_".join(t for t in _TOKEN_SPLIT.split(text) if t)


@functools.lru_cache(maxsize=8192)  # asked once per metric per request; senders repeat them
def metric_name(name: str, unit: str, *, counter: bool, gauge: bool) -> str:
    """The Prometheus metric (family) name of an OTLP metric; "" when nothing is left."""
    tokens = [t for t in _TOKEN_SPLIT.split(name) if t]
    if not tokens:
        return ""
    main, per = unit_name(unit)
    if main and main not in tokens:
        tokens.append(main)
    if per and per not in tokens:
        tokens += ["per", per]
    if counter:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if gauge and unit.strip() == "1" and "ratio" not in tokens:
        tokens.append("ratio")
    result = "_".join(tokens)
    return "_" + result if result[0].isdigit() else result


@functools.lru_cache(maxsize=4096)  # senders repeat the same few keys in every point
def label_name(key: str) -> str:
    """The Prometheus label name of an OTLP attribute key; "" for an empty key."""
    if not key:
        return ""
    name = _LABEL_INVALID.sub("_", key)
    if name[0].isdigit():
        return "key_" + name
    if name.startswith("__"):
        return "key" + name
    return name


def _any_to_json(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_to_json(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_to_json(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attribute_value(value: AnyValue) -> str:
    """An attribute value as the label value the Collector writes."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind is None:
        return ""
    return json.dumps(_any_to_json(value), separators=(",", ":"))


def attribute_labels(attributes: Iterable[KeyValue]) -> dict[str, str]:
    """Attributes as sanitised labels; keys that collide after sanitising have their values
    joined with ``;`` in the order of the original keys, as the spec asks."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for kv in attributes:
        name = label_name(kv.key)
        if name:
            by_label.setdefault(name, []).append((kv.key, attribute_value(kv.value)))
    return {
        name: ";".join(v for _, v in sorted(pairs)) if len(pairs) > 1 else pairs[0][1]
        for name, pairs in by_label.items()
    }

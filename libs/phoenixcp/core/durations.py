"""Durations as people write them in config files: ``250ms``, ``10s``, ``5m``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_HELP", "format_duration", "parse_duration"]

DURATION_HELP = "a duration such as 500ms, 10s, 5m, 1h or 1h30m (units: ms, s, m, h, d)"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a non-negative timedelta; raise ``ValueError`` saying what is allowed.

    A bare ``0`` is accepted; any other number needs a unit, because ``30`` is ambiguous.
    """
    s = text.strip()
    if s == "0":
        return timedelta(0)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"{text!r} is not {DURATION_HELP}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest ``parse_duration`` spelling of ``value`` (``1500ms``, ``10s``, ``2m``)."""
    ms = round(value.total_seconds() * 1000)
    for unit, factor in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"

"""The JetStream streams Phoenix owns, and an idempotent create-or-update of them.

Every replica of every service runs :func:`ensure_streams` at start and after each reconnect.
It is a reconciler: it reads the stream, changes only the settings Phoenix owns when they
differ from the config, and never deletes or purges, so replicas starting together or one
after another leave the stored messages alone.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from phoenixcp.errors import StartupError
from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.envelope import EVENTS_PREFIX, TELEMETRY_PREFIX
from phoenixcp.platform.bus.ports import EVENTS_STREAM, TELEMETRY_STREAM

__all__ = ["StreamOutcome", "ensure_stream", "ensure_streams", "stream_configs"]

_log = logging.getLogger(__name__)

StreamOutcome = Literal["created", "updated", "unchanged"]

# Settings Phoenix decides; anything else on the stream (placement, metadata an operator
# added) is carried over untouched by an update.
_OWNED: Final = ("subjects", "retention", "storage", "discard", "max_age", "duplicate_window",
                 "num_replicas")


def stream_configs(config: BusConfig) -> list[StreamConfig]:
    """The desired ``PHOENIX_EVENTS`` and ``PHOENIX_TELEMETRY`` streams."""
    return [
        _stream(config, EVENTS_STREAM, f"{EVENTS_PREFIX}.>", config.events_max_age.total_seconds(),
                "Phoenix events: one phoenix.v1.Event per message"),
        _stream(config, TELEMETRY_STREAM, f"{TELEMETRY_PREFIX}.>",
                config.telemetry_max_age.total_seconds(),
                "Phoenix telemetry: pipeline window reports"),
    ]


def _stream(config: BusConfig, name: str, subject: str, max_age: float,
            description: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        # On disk: a NATS restart must not lose events or window reports.
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        duplicate_window=config.duplicate_window.total_seconds(),
        num_replicas=config.stream_replicas,
    )


def _normal(key: str, value: object) -> object:
    """Compare durations in whole ms (the server answers in ns, we send float seconds)."""
    if key in ("max_age", "duplicate_window") and isinstance(value, int | float):
        return round(value * 1000)
    if key == "subjects" and isinstance(value, list):
        return sorted(value)
    return value


def _differences(current: StreamConfig, desired: StreamConfig) -> dict[str, tuple[object, object]]:
    found = {}
    for key in _OWNED:
        have, want = getattr(current, key), getattr(desired, key)
        if _normal(key, have) != _normal(key, want):
            found[key] = (have, want)
    return found


async def ensure_stream(js: JetStreamContext, desired: StreamConfig) -> StreamOutcome:
    """Create ``desired`` or bring the settings Phoenix owns in line with it.

    Idempotent and safe to run from many replicas at once: a lost creation race falls back
    to the update path. Raises ``StartupError`` when the stream exists with a setting the
    server cannot change (its storage type); nats errors propagate.
    """
    name = str(desired.name)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(desired)
        except BadRequestError:
            # Another replica created it a moment ago, perhaps from an older config.
            info = await js.stream_info(name)
        else:
            _log.info("created stream", extra={"fields": {"stream": name}})
            return "created"
    changes = _differences(info.config, desired)
    if not changes:
        return "unchanged"
    if "storage" in changes:
        have, want = changes["storage"]
        raise StartupError(
            f"stream {name} exists with storage {have} but Phoenix needs {want}; the server "
            f"cannot change it: back up and delete the stream (nats stream rm {name}), then "
            "start again",
            name=name,
        )
    merged = info.config.evolve(**{key: getattr(desired, key) for key in changes})
    await js.update_stream(merged)
    _log.info(
        "updated stream",
        extra={"fields": {"stream": name, "changes": {k: f"{a} -> {b}" for k, (a, b)
                                                       in changes.items()}}},
    )
    return "updated"


async def ensure_streams(js: JetStreamContext, config: BusConfig) -> dict[str, StreamOutcome]:
    """Run :func:`ensure_stream` for every Phoenix stream; the outcome by stream name."""
    return {str(c.name): await ensure_stream(js, c) for c in stream_configs(config)}

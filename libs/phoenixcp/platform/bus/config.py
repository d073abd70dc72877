"""How the event bus talks to NATS JetStream: one frozen, validated config."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from phoenixcp.errors import ConfigError
from phoenixcp.platform.redact import redacted_urls

__all__ = ["BusConfig"]

_DUPLICATE_WINDOW_MIN = timedelta(minutes=2)


@dataclass(frozen=True, kw_only=True)
class BusConfig:
    """Connection, stream and delivery settings of :class:`~phoenixcp.platform.bus.EventBus`.

    ``url`` is one ``nats://`` / ``tls://`` URL or several, comma-separated. Durations are
    ``timedelta``; the constructor raises :class:`ConfigError` naming the bad key.
    """

    url: str
    connect_timeout: timedelta
    #: How long ``start()`` keeps trying to reach NATS before it raises ``Unavailable``.
    start_timeout: timedelta = timedelta(seconds=10)
    events_max_age: timedelta = timedelta(days=7)
    telemetry_max_age: timedelta = timedelta(minutes=15)
    #: JetStream drops a second message with the same ``Nats-Msg-Id`` within this window.
    duplicate_window: timedelta = timedelta(minutes=2)
    #: Stream replicas: 1 for a single server, 3 for a production cluster.
    stream_replicas: int = 1
    #: Most messages held while NATS is away; one more raises ``ResourceExhausted``.
    publish_buffer: int = 10_000
    #: Longest a ``publish`` call waits for JetStream before it buffers the message.
    publish_timeout: timedelta = timedelta(seconds=2)
    #: Redelivery delay after a handler raised.
    nak_delay: timedelta = timedelta(seconds=1)
    #: Redelivery after a consumer took a message and neither acked nor naked it (a crash).
    ack_wait: timedelta = timedelta(seconds=30)
    #: How long one pull request waits for a message; also the most ``stop()`` waits for it.
    pull_wait: timedelta = timedelta(seconds=1)
    #: Event ids remembered per subscription to skip redeliveries already handled.
    dedupe_window: int = 10_000
    #: How often each subscription reads its consumer's lag for the pending gauge.
    lag_poll_interval: timedelta = timedelta(seconds=5)
    #: How long ``shutdown()`` keeps flushing buffered messages before it gives up on them.
    shutdown_grace: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        for url in self.url.split(","):
            if not url.strip().startswith(("nats://", "tls://")):
                raise ConfigError(
                    f"bus.url: {redacted_urls(self.url)!r} is not a nats:// or tls:// URL "
                    "(several: comma-separated)",
                    key="url",
                )
        for key in ("connect_timeout", "start_timeout", "events_max_age", "telemetry_max_age",
                    "publish_timeout", "ack_wait", "pull_wait", "lag_poll_interval"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(f"bus.{key}: must be a positive duration", key=key)
        for key in ("nak_delay", "shutdown_grace"):
            if getattr(self, key) < timedelta(0):
                raise ConfigError(f"bus.{key}: must not be negative", key=key)
        if self.duplicate_window < _DUPLICATE_WINDOW_MIN:
            # Shorter, and a publish retried after a long NATS outage could be stored twice.
            raise ConfigError("bus.duplicate_window: must be at least 2m", key="duplicate_window")
        if self.duplicate_window > self.telemetry_max_age:
            raise ConfigError(
                "bus.duplicate_window: must not exceed telemetry_max_age (JetStream refuses it)",
                key="duplicate_window",
            )
        for key in ("publish_buffer", "dedupe_window", "stream_replicas"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bus.{key}: must be at least 1", key=key)

    @property
    def shown_url(self) -> str:
        """``url`` with any password shown as ``***``: for logs and errors."""
        return redacted_urls(self.url)

    @property
    def servers(self) -> list[str]:
        """The server URLs, in the order given."""
        return [url.strip() for url in self.url.split(",")]

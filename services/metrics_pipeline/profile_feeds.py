"""Profiles with their own exporter: a second backend that receives another profile's output.

A profile may name one of the pipeline's exporters (``Profile.exporter``, e.g. the
``experimental`` profile sent to a second VictoriaMetrics), so a user can compare its output
with the active profile's in a real backend, as the original Phoenix's experimental pipeline
did. For each such profile this replica runs one more :class:`PolicyEngine` that sees every
batch and applies that profile to every tenant (plus each tenant's own policies and the
static ones); its output, passed-through and merged, is queued for the named exporter only,
and the active profile's output no longer goes there. Shadow accounting keeps reporting every
profile's cardinality without exporting anything.

A name that is not one of this replica's exporters is ignored (logged once per change): the
policy is valid, this replica just cannot honour it. At least one exporter always keeps the
active profile's output: a profile may not claim the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.policy.engine import MergedOutput, PolicyEngine, PolicySource
from phoenixcp.core.policy.model import PolicySpec, ProfileSpec

__all__ = ["Feed", "ProfileFeeds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Pinned:
    """``source`` with one profile in force for every tenant (the feed's engine reads it)."""

    source: PolicySource
    profile: ProfileSpec

    @property
    def profiles(self) -> Mapping[str, ProfileSpec]:
        return {self.profile.name: self.profile}  # no shadow accounting in a feed

    def profile_for(self, tenant: str) -> ProfileSpec:
        return self.profile

    @property
    def rejections(self) -> Sequence[tuple[str, str, tuple[tuple[str, str], ...]]]:
        return ()

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]:
        active = self.source.profile_for(tenant).policies
        own = [p for p in self.source.policies_for(tenant, now) if p not in active]
        chosen = [p for p in (*self.profile.policies, *own) if not p.expired(now)]
        return tuple(sorted(chosen, key=PolicySpec.sort_key))


@dataclass(slots=True, eq=False)
class Feed:
    """One profile's engine and the exporter its output goes to."""

    profile: str
    exporter: str
    engine: PolicyEngine


class ProfileFeeds:
    """The feeds of the profiles that name an exporter; ``apply`` follows policy changes."""

    def __init__(self, *, replica_id: str, exporters: Sequence[str],
                 default_flush: timedelta) -> None:
        self._replica = replica_id
        self._exporters = tuple(exporters)
        self._default_flush = default_flush
        self.feeds: dict[str, Feed] = {}
        self.claimed: frozenset[str] = frozenset()
        """Exporters that receive a profile's output instead of the active profile's."""
        self._retired: list[Feed] = []

    def apply(self, source: PolicySource) -> None:
        """Start, keep or stop feeds for the profiles in ``source`` that name an exporter."""
        wanted: dict[str, ProfileSpec] = {}
        for profile in source.profiles.values():
            if not profile.exporter:
                continue
            if profile.exporter not in self._exporters:
                log.warning("profile names an exporter this replica does not have; ignored",
                            extra={"fields": {"profile": profile.name,
                                              "exporter": profile.exporter,
                                              "exporters": list(self._exporters)}})
                continue
            wanted[profile.name] = profile
        claimed = {p.exporter for p in wanted.values()}
        if claimed and claimed.issuperset(self._exporters):
            log.error("profiles name every exporter; the active profile's output needs one, "
                      "so no profile gets its own", extra={"fields": {
                          "profiles": sorted(wanted), "exporters": list(self._exporters)}})
            wanted = {}
        for name in [n for n in self.feeds if n not in wanted
                     or self.feeds[n].exporter != wanted[n].exporter]:
            self._retired.append(self.feeds.pop(name))
        for name, profile in wanted.items():
            feed = self.feeds.get(name)
            if feed is None:
                feed = self.feeds[name] = Feed(name, profile.exporter, PolicyEngine(
                    replica_id=self._replica, default_flush=self._default_flush))
                log.info("profile feeds its own exporter", extra={"fields": {
                    "profile": name, "exporter": profile.exporter}})
            feed.engine.apply(_Pinned(source, profile))
        self.claimed = frozenset(f.exporter for f in self.feeds.values())

    def process(self, batch: MetricBatch) -> list[tuple[str, MetricBatch]]:
        """Route ``batch`` through every feed: what each passes, with its exporter."""
        out = []
        for feed in self.feeds.values():
            outcome = feed.engine.process(batch)
            if outcome.passthrough is not None:
                out.append((feed.exporter, outcome.passthrough))
        return out

    def flush(self, *, force: bool = False) -> list[tuple[str, MergedOutput]]:
        """Merged output due in every feed (all of it with ``force``) and the last output of
        the feeds that stopped, each with the exporter it goes to."""
        retired, self._retired = self._retired, []
        return [(feed.exporter, o) for feed in (*self.feeds.values(), *retired)
                for o in feed.engine.flush(force=force or feed in retired)]

    def end_windows(self) -> None:
        """Start the feeds' next windows, so series that went silent are forgotten (the
        feeds report nothing: window reports are the active engine's)."""
        for feed in self.feeds.values():
            feed.engine.window_jobs()  # the windows turn; nothing is built from them

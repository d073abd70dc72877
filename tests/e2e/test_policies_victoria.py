"""Policies and profiles end to end: three metrics-pipeline processes on the session's NATS and
etcd, forwarding to the session's VictoriaMetrics; policies written to etcd as an operator
(or a buggy tool) would; what a user queries with PromQL is what is checked.

- a ``user_id`` bomb on one counter under a cap of 1,000: at most 1,001 series reach the
  backend and the sums (last values, and increase over the sending period) equal what was sent;
- the same with three replicas behind a round-robin sender: at most 3 x 1,001 series, sums exact;
- a profile switch written to etcd is applied by every replica within 1 s (measured);
- critical series pass the ``aggressive`` profile unchanged, all of them;
- invalid policies written straight to etcd are refused, reported, and change nothing.

Every test uses its own tenant and metric names; whatever a test writes under /phoenix/v1/ is
deleted when the module ends (the session's etcd is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from phoenixcp.api.phoenix.v1 import common_pb2, state_pb2
from phoenixcp.platform.config import EtcdConfig
from phoenixcp.platform.coord import EtcdConnection, StateStore
from phoenixcp.platform.embedded import EmbeddedEtcd, EmbeddedNats, EmbeddedVictoriaMetrics
from phoenixcp.platform.policy import PolicyStore
from phoenixcp.platform.policy.keys import active_key, policy_key
from tests.e2e._policy_support import (
    CounterBomb,
    Exported,
    PipelineReplicas,
    post_write,
    scrape,
    scrape_all,
    series_labels,
    unlabelled,
    wait_view_revision,
)
from tests.integration._pipeline_support import write_request

pytestmark = pytest.mark.e2e

CAP = 1_000
ROUND_S = 3  # between rounds: room for a 1 s merge flush, so increase() windows are exact
SWITCH_BOUND = 1.0
POLL_S = 0.02


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory: pytest.TempPathFactory, nats_server: EmbeddedNats,
                   etcd_server: EmbeddedEtcd,
                   victoria_metrics: EmbeddedVictoriaMetrics) -> AsyncIterator[PipelineReplicas]:
    group = PipelineReplicas(
        state_dir=tmp_path_factory.mktemp("policies"), count=3, nats_url=nats_server.url,
        etcd_endpoint=etcd_server.endpoint, backend_url=victoria_metrics.write_url,
        pipeline={"merge_flush_interval": "1s", "policy_flush_check": "100ms"})
    try:
        began = time.monotonic()
        await group.start(timeout=40)
        print(f"\n{len(group)} pipeline replicas SERVING after {time.monotonic() - began:.1f}s")
        yield group
    finally:
        group.stop()


class Etcd:
    """The test's own etcd client (raw StateStore and PolicyStore); remembers what it wrote."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.policies = PolicyStore(state)
        self.written: set[str] = set()

    async def put(self, key: str, value: state_pb2.Policy | state_pb2.ActiveProfile) -> int:
        self.written.add(key)
        return await self.state.put(key, value)

    async def cap(self, tenant: str, max_series: int, policy_id: str = "cap-per-metric") -> int:
        """A tenant's cap policy through the API's store (validated), with the tenant pinned
        to the ``full`` profile so the default pointer cannot change its data. Returns the
        etcd revision that holds both."""
        await self.policies.set_active_profile(tenant, "full", set_by="test", reason="isolate")
        self.written.add(active_key(tenant))
        await self.policies.apply_policy(state_pb2.Policy(
            id=policy_id, tenant=tenant, reason="e2e test",
            cap=state_pb2.SeriesCapAction(max_series=max_series)), author_default="test")
        self.written.add(policy_key(tenant, policy_id))
        found = await self.state.get(policy_key(tenant, policy_id), state_pb2.Policy)
        assert found is not None
        return found.mod_revision

    async def pointer(self, profile: str) -> int:
        """Set the default active-profile pointer with one raw put; its revision."""
        pb = state_pb2.ActiveProfile(profile_name=profile, set_by="test",
                                     reason="e2e profile switch")
        pb.set_time.GetCurrentTime()
        return await self.put(active_key(""), pb)


@pytest.fixture(scope="module")
async def etcd(etcd_server: EmbeddedEtcd, replicas: PipelineReplicas) -> AsyncIterator[Etcd]:
    conn = await EtcdConnection.open(EtcdConfig(endpoints=(etcd_server.endpoint,)))
    client = Etcd(StateStore(conn))
    before = await client.state.get(active_key(""), state_pb2.ActiveProfile)
    try:
        yield client
    finally:
        for key in sorted(client.written):
            await client.state.delete(key)
        if before is not None:
            await client.state.put(active_key(""), before.value)
        await conn.close()


# -- checks -----------------------------------------------------------------------------------


async def settle_bomb(vm: EmbeddedVictoriaMetrics, bomb: CounterBomb,
                      timeout: float = 20.0) -> Exported:
    """Export the bomb's metric until the sum of its series' last values equals what was sent
    (or ``timeout`` passes: the caller's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        exported = Exported(await asyncio.to_thread(vm.export_series,
                                                    f'{{__name__="{bomb.metric}"}}'))
        if exported.series and exported.last_sum() == bomb.last_sum:
            return exported
        if time.monotonic() > deadline:
            return exported
        await asyncio.sleep(0.3)


async def instant(vm: EmbeddedVictoriaMetrics, promql: str, at: float | None = None) -> float:
    result = await asyncio.to_thread(vm.query, promql, at=at)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


async def settled(vm: EmbeddedVictoriaMetrics, promql: str, want: float,
                  at: float | None = None, timeout: float = 5.0) -> float:
    """``promql``'s value once it is ``want``, or after ``timeout`` s whatever it is (the
    caller's assertion shows it). VictoriaMetrics' queries can answer with a series' older
    samples for about a second after /api/v1/export already shows the new one
    (``query_until``); a sum that never reaches ``want`` still fails."""
    def done(result: list[dict[str, Any]]) -> bool:
        return len(result) == 1 and math.isclose(float(result[0]["value"][1]), want,
                                                  rel_tol=1e-9)
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(vm.query_until, promql, done, at=at, timeout=timeout)
    return await instant(vm, promql, at)


async def check_bomb(vm: EmbeddedVictoriaMetrics, bomb: CounterBomb, *, replica_ids: list[str],
                     round0_done: float, label: str) -> None:
    """What VictoriaMetrics holds for ``bomb`` after a per-replica cap of CAP: the series
    count, and sums equal to what was sent (printed)."""
    exported = await settle_bomb(vm, bomb)
    metric = bomb.metric
    n_raw, n_over = len(exported.raw), len(exported.overflow)
    assert n_raw + n_over <= len(replica_ids) * (CAP + 1), (n_raw, n_over)
    assert n_raw == min(bomb.users, len(replica_ids) * CAP), n_raw
    assert sorted(s["metric"]["phoenix_replica"] for s in exported.overflow) == sorted(
        replica_ids)
    for s in exported.overflow:
        assert set(s["metric"]) == {"__name__", "otel_metric_overflow", "phoenix_replica"}
    for s in exported.raw:
        assert "phoenix_replica" not in s["metric"], s["metric"]
        assert len(s["values"]) == bomb.rounds, s
    assert exported.last_sum() == bomb.last_sum, (
        f"sum of the last values in VictoriaMetrics {exported.last_sum():.0f} != sent "
        f"{bomb.last_sum:.0f}")

    count = await instant(vm, f"count(last_over_time({metric}[5m]))")
    last_ms = exported.last_timestamp_ms
    at_last = await settled(vm, f"sum({metric})", bomb.last_sum, at=last_ms / 1000)
    over_5m = await settled(vm, f"sum(last_over_time({metric}[5m]))", bomb.last_sum)
    # increase() over (S, T]: S just before round 1, T the last sample. VictoriaMetrics does
    # not extrapolate to the window's edges as Prometheus does; per series it takes the last
    # sample in the window minus the last one before it: round 0 for a raw series, and for an
    # overflow series its flush after round 0, which must be stamped before S (checked).
    start_ms = bomb.stamp(1) - 1
    assert round0_done + 1.3 < start_ms / 1000, (
        f"round 0 was answered {start_ms / 1000 - round0_done:.2f}s before round 1: too late "
        "for its overflow flush (1 s) to come before the increase window")
    for s in exported.overflow:
        assert min(s["timestamps"]) < start_ms, s
    window_ms = last_ms - start_ms
    sent_increase = bomb.increase_after_first_round
    increase = await settled(vm, f"sum(increase({metric}[{window_ms}ms]))", sent_increase,
                             at=last_ms / 1000)
    print(f"\n[{label}] {bomb.users:,} user_id counters, {bomb.rounds} rounds {bomb.period_s}s "
          f"apart, cap {CAP:,}/metric/replica on {len(replica_ids)} replica(s):\n"
          f"  VictoriaMetrics holds {count:.0f} series ({n_raw:,} raw + {n_over} overflow; "
          f"bound {len(replica_ids) * (CAP + 1):,})\n"
          f"  sum({metric}) at the last timestamp = {at_last:,.0f}; "
          f"sum(last_over_time[5m]) = {over_5m:,.0f}; sent (sum of last values) = "
          f"{bomb.last_sum:,.0f}\n"
          f"  sum(increase[{window_ms / 1000:.3f}s]) from round 0 to the end = {increase:,.3f}; "
          f"sent increase = {sent_increase:,.0f} (rate {bomb.sent_rate:,.0f}/s; "
          "VictoriaMetrics does not extrapolate, so exact)")
    assert count == n_raw + n_over
    assert at_last == bomb.last_sum
    assert over_5m == bomb.last_sum
    assert math.isclose(increase, sent_increase, rel_tol=1e-9), (increase, sent_increase)


# -- 1, 2: the bomb under a cap ---------------------------------------------------------------


async def run_bomb(replicas: PipelineReplicas, bomb: CounterBomb, tenant: str,
                   route: list[int]) -> float:
    """Send ``bomb``; request ``k`` goes to replica ``route[k % len(route)]``. Returns the wall
    time at which round 0 was fully answered."""
    answered = await bomb.send(tenant, lambda k: replicas.write_url(route[k % len(route)]))
    return answered[0]


def bomb_at(metric: str, users: int, chunks: int, rounds: int = 4) -> CounterBomb:
    start = (int(time.time()) + 1) * 1000
    return CounterBomb(metric=metric, users=users, rounds=rounds, period_s=ROUND_S,
                       chunks=chunks, start_ms=start)


async def test_user_id_bomb_is_capped_with_exact_sums(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    tenant = "e2e-bomb-one"
    await wait_view_revision(replicas, await etcd.cap(tenant, CAP))
    bomb = bomb_at("bomb_requests_total", users=3_000, chunks=3)
    done = await run_bomb(replicas, bomb, tenant, route=[0])
    await check_bomb(victoria_metrics, bomb, replica_ids=[replicas.replica_id(0)],
                     round0_done=done, label="1 replica")


async def test_three_replicas_round_robin_keep_the_sum_exact(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    """6,000 users in 6 requests per round, request k to replica k % 3: since 6 is a multiple
    of 3, each user's requests always reach the same replica (as behind a load balancer that
    keeps connections), and each replica sees 2,000 users: 1,000 raw, 1,000 in its overflow."""
    tenant = "e2e-bomb-rr"
    await wait_view_revision(replicas, await etcd.cap(tenant, CAP))
    bomb = bomb_at("bomb_rr_requests_total", users=6_000, chunks=6)
    done = await run_bomb(replicas, bomb, tenant, route=[0, 1, 2])
    ids = [replicas.replica_id(i) for i in range(3)]
    await check_bomb(victoria_metrics, bomb, replica_ids=ids, round0_done=done,
                     label="3 replicas, round-robin")


@pytest.mark.xfail(strict=True, reason=(
    "KNOWN GAP (reported): with per-request round-robin a counter series visits every "
    "replica; each replica's cap admits or overflows it on its own and an overflow counts a "
    "counter it sees for the first time from zero, so the same series is counted by several "
    "replicas and sum() over the metric exceeds what was sent. ADR 0007 says sum() stays "
    "exact when a group's inputs arrive at several replicas; that holds only while each input "
    "series sticks to one replica (or with the sharding mode, not built)."))
async def test_round_robin_that_moves_series_between_replicas_keeps_the_sum_exact(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    """600 users in 4 requests per round, request k to replica k % 3: a user's requests go to
    a different replica every round. Cap 100 per replica."""
    tenant = "e2e-bomb-hop"
    await wait_view_revision(replicas, await etcd.cap(tenant, 100))
    bomb = CounterBomb(metric="bomb_hop_requests_total", users=600, rounds=3, period_s=2,
                       chunks=4, start_ms=(int(time.time()) + 1) * 1000)
    await bomb.send(tenant, lambda k: replicas.write_url(k % 3))
    await asyncio.sleep(max(0.0, bomb.stamp(bomb.rounds - 1) / 1000 + 2.5 - time.time()))
    exported = Exported(await asyncio.to_thread(victoria_metrics.export_series,
                                                f'{{__name__="{bomb.metric}"}}'))
    print(f"\n[3 replicas, series moving between replicas] {bomb.users} users, cap 100: "
          f"{len(exported.series)} series (bound {3 * 101}); sum of last values "
          f"{exported.last_sum():,.0f}, sent {bomb.last_sum:,.0f} "
          f"({exported.last_sum() / bomb.last_sum:.2f}x)")
    assert len(exported.series) <= 3 * 101
    assert exported.last_sum() == bomb.last_sum


# -- 5: invalid policies in etcd --------------------------------------------------------------


BAD_POLICIES = {  # id -> (the policy, the message every replica logs for it)
    "cap": (state_pb2.Policy(cap=state_pb2.SeriesCapAction(max_series=0)),
            "cap.max_series: must be at least 1, got 0"),
    "bad-regex": (state_pb2.Policy(match=common_pb2.MetricSelector(
        metric_name_regex="badpol_(requests"), drop=state_pb2.DropAction()),
        "match.metric_name_regex: 'badpol_(requests' is not a valid regular expression"),
    "bad-type": (state_pb2.Policy(match=common_pb2.MetricSelector(
        metric_name="badpol_requests_total",
        metric_type=42),  # type: ignore[arg-type]  # a number this build does not know
        drop=state_pb2.DropAction()),
        "match.metric_type: unknown metric type 42"),
    "bad-by-without": (state_pb2.Policy(
        match=common_pb2.MetricSelector(metric_name="badpol_requests_total"),
        aggregate=state_pb2.AggregateAction(by=["job"], without=["user_id"])),
        "aggregate: give `by` (the labels to keep) or `without` (the labels to remove), "
        "not both"),
    "bad-label": (state_pb2.Policy(
        match=common_pb2.MetricSelector(metric_name="badpol_requests_total"),
        aggregate=state_pb2.AggregateAction(without=["user-id"])),
        "aggregate.without[0]: label name 'user-id' does not match"),
}


def logged_rejections(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("msg", "")).startswith("invalid policy in etcd not applied"):
            out.append(entry)
    return out


async def test_invalid_policies_in_etcd_keep_the_last_valid_set(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    """A valid cap of 10, then five invalid values written behind the API's back: the cap
    itself replaced by a cap of 0, and four new policies (invalid regex, unknown metric type,
    `by` with `without`, a label name that is not a Prometheus label) that would drop or
    merge the metric if they were applied. Every replica refuses each one, logs it with its
    message and counts it; data sent afterwards is accepted and capped at 10 as before."""
    tenant, metric, cap = "e2e-bad-policies", "badpol_requests_total", 10
    await wait_view_revision(replicas, await etcd.cap(tenant, cap, policy_id="cap"))
    before = await scrape_all(replicas)
    now = time.time()

    def batch(users: range, at: float) -> bytes:
        return write_request([([("__name__", metric), ("job", "bad"), ("user_id", f"u{u}")],
                               [(int(at * 1000), float(u + 1))]) for u in users])

    async with aiohttp.ClientSession() as session:
        await post_write(session, replicas.write_url(2), batch(range(50), now), tenant)

        stored = await etcd.policies.get_policy(tenant, "cap")
        revision = 0
        for policy_id, (bad, _) in BAD_POLICIES.items():
            pb = state_pb2.Policy()
            pb.CopyFrom(bad)
            pb.id, pb.tenant, pb.reason = policy_id, tenant, "written behind the API's back"
            pb.generation = stored.generation + 1 if policy_id == "cap" else 1
            revision = await etcd.put(policy_key(tenant, policy_id), pb)
        await wait_view_revision(replicas, revision)
        after = await scrape_all(replicas)

        # Sent after the bad writes: 50 known users (new values) and 20 new ones.
        later = now + 1
        await post_write(session, replicas.write_url(2),
                         batch(range(70), later), tenant)
        page = await scrape(session, replicas.metrics_url(2))

    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        refused = (a.value("phoenix_policy_rejected_total", kind="policy")
                   - b.value("phoenix_policy_rejected_total", kind="policy"))
        current = a.value("phoenix_policy_rejections", kind="policy")
        assert refused == len(BAD_POLICIES), (replicas.replica_id(i), refused)
        assert current >= len(BAD_POLICIES), (replicas.replica_id(i), current)
        entries = [e for e in logged_rejections(replicas.log_path(i))
                   if str(e.get("key", "")).startswith(f"policies/{tenant}/")]
        for policy_id, (_, message) in BAD_POLICIES.items():
            mine = [e for e in entries if e["key"] == f"policies/{tenant}/{policy_id}"]
            assert len(mine) == 1, (replicas.replica_id(i), policy_id, entries)
            violations = " | ".join(map(str, mine[0]["violations"]))  # type: ignore[call-overload]
            assert message in violations, (policy_id, violations)
            assert mine[0]["kept_previous"] is (policy_id == "cap")
    print(f"\n[invalid policies] each of {len(replicas)} replicas refused "
          f"{len(BAD_POLICIES)} values (phoenix_policy_rejected_total{{kind=\"policy\"}} "
          f"+{len(BAD_POLICIES)}), logged once each:")
    for policy_id, (_, message) in BAD_POLICIES.items():
        print(f"  policies/{tenant}/{policy_id}: {message} ...")

    def delta(action: str) -> float:
        return (page.value("phoenix_policy_points_total", tenant=tenant, action=action)
                - after[2].value("phoenix_policy_points_total", tenant=tenant, action=action))

    # Still capped at 10: the 10 admitted users pass, the 40 + 20 others overflow, none dropped.
    assert (delta("passed"), delta("overflowed"), delta("dropped"), delta("merged")) == (
        10, 60, 0, 0)
    expected_sum = sum(float(u + 1) for u in range(70))
    result = await asyncio.to_thread(
        victoria_metrics.query_until, f"sum(last_over_time({metric}[5m]))",
        lambda r: bool(r) and float(r[0]["value"][1]) == expected_sum, timeout=15)
    count = await instant(victoria_metrics, f"count(last_over_time({metric}[5m]))")
    print(f"  afterwards: a request of 70 series accepted; {count:.0f} series in "
          f"VictoriaMetrics (cap {cap} + overflow), sum {float(result[0]['value'][1]):.0f} = "
          f"sent {expected_sum:.0f}")
    assert count == cap + 1


# -- 3, 4: profiles ---------------------------------------------------------------------------


async def poll_applied(replicas: PipelineReplicas, since: float,
                       timeout: float = 5.0) -> list[tuple[float, float, float, float]]:
    """Scrape each replica's /metrics every POLL_S (a new scrape starts POLL_S after the last
    one started, or when it ends if it took longer) until it shows an applied timestamp after
    ``since``. Per replica: (wall time the answer came, the replica's applied timestamp, its
    policy view's etcd revision, the median scrape time: the resolution)."""

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[float, float, float, float]:
        took: list[float] = []
        while True:
            tick = time.monotonic()
            async with session.get(replicas.metrics_url(i)) as response:
                text = await response.text()
            now = time.time()
            took.append(time.monotonic() - tick)
            applied = unlabelled(text, "phoenix_policy_applied_timestamp_seconds")
            if applied > since:
                return (now, applied, unlabelled(text, "phoenix_policy_view_revision"),
                        statistics.median(took))
            assert now - since < timeout, f"{replicas.replica_id(i)}: nothing in {timeout}s"
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - tick)))

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(session, i) for i in range(len(replicas)))))


async def use_profile(replicas: PipelineReplicas, etcd: Etcd, profile: str) -> None:
    current = await etcd.state.get(active_key(""), state_pb2.ActiveProfile)
    if current is None or current.value.profile_name != profile:
        await wait_view_revision(replicas, await etcd.pointer(profile))


async def test_profile_switch_in_etcd_reaches_every_replica_within_a_second(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    await use_profile(replicas, etcd, "full")
    await asyncio.sleep(0.2)
    written = time.time()
    poller = asyncio.create_task(poll_applied(replicas, written))  # polling before the write
    revision = await etcd.pointer("aggressive")
    put_took = time.time() - written
    seen = await poller
    assert all(view >= revision for _, _, view, _ in seen), (seen, revision)
    delays = [at - written for at, _, _, _ in seen]
    stamped = [applied - written for _, applied, _, _ in seen]
    resolution = max(max(POLL_S, took) for _, _, _, took in seen)
    print(f"\n[profile switch full -> aggressive, etcd put took {put_took * 1000:.0f} ms] "
          f"seen on /metrics (polled every {resolution * 1000:.0f} ms) after: "
          + ", ".join(f"{replicas.replica_id(i)} {d * 1000:.0f} ms" for i, d in
                      enumerate(delays))
          + "; replicas' own applied timestamps: "
          + ", ".join(f"{s * 1000:.0f} ms" for s in stamped))
    assert all(d < SWITCH_BOUND for d in delays), delays

    # Data-wise: a metric with user_id now arrives aggregated (per replica, without user_id).
    tenant, metric, users = "e2e-switch", "switch_requests_total", 30
    now = int(time.time() * 1000)
    sent = {}
    async with aiohttp.ClientSession() as session:
        for i in range(len(replicas)):
            mine = range(i * users, (i + 1) * users)
            await post_write(session, replicas.write_url(i), write_request([
                ([("__name__", metric), ("job", "switch"), ("route", "/pay"),
                  ("user_id", f"u{u}")], [(now, float(u + 1))]) for u in mine]), tenant)
            sent[replicas.replica_id(i)] = sum(float(u + 1) for u in mine)
    pages = await scrape_all(replicas)
    for page in pages:
        assert page.value("phoenix_policy_points_total", tenant=tenant, action="merged") == users
    want = {frozenset({"__name__": metric, "job": "switch", "route": "/pay",
                       "phoenix_replica": r}.items()): v for r, v in sent.items()}
    # The profile's aggregate policy flushes every 15 s (its own flush_interval).
    began = time.monotonic()
    result = await asyncio.to_thread(
        victoria_metrics.query_until, f"last_over_time({metric}[5m])",
        lambda r: {series_labels(s): float(s["value"][1]) for s in r} == want, timeout=25)
    print(f"  then {len(replicas)}x{users} series with user_id arrived as {len(result)} series "
          f"without it (one per replica, sums exact) after {time.monotonic() - began:.1f}s "
          "(the aggregate's 15 s flush)")


async def test_critical_series_survive_the_aggressive_profile(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    """Under ``aggressive`` (per-request and per-client labels merged away, LOW series rolled
    up, a cap of 1,000 per metric), one request mixes critical series (by name: ``up``,
    ``ALERTS``, an SLO series, a recording rule; by label: ``phoenix_priority="critical"``,
    with ``user_id`` and 1,200 ``up`` series, more than the cap) with series the profile
    changes. Every critical series arrives as sent: same labels, timestamps and values."""
    await use_profile(replicas, etcd, "aggressive")
    tenant, job = "e2e-critical", "crit-e2e"
    t0 = int(time.time() * 1000) - 1000
    stamps = (t0, t0 + 500)

    def series(name: str, n: int, **labels: str) -> list[list[tuple[str, str]]]:
        out = []
        for i in range(n):
            ls = {"__name__": name, "job": job, **{k: v.format(i=i) for k, v in labels.items()}}
            out.append(sorted(ls.items()))
        return out

    critical = (series("up", 1_200, instance="host-{i:04d}")
                + series("ALERTS", 1, alertname="HighLatency", alertstate="firing")
                + series("checkout_slo_errors_total", 5, user_id="u{i}")
                + series("job:http_requests:rate5m", 5, client_ip="10.0.0.{i}")
                + series("payments_total", 50, phoenix_priority="critical", user_id="u{i}"))
    changed = {  # name -> (series, points passed unchanged, merged, overflowed)
        "payments_total": series("payments_total", 50, user_id="u{i}"),
        "crit_mix_bomb_total": series("crit_mix_bomb_total", 1_200, shard="s{i}"),
        "process_cpu_seconds_total": series(
            "process_cpu_seconds_total", 20, phoenix_priority="low", process_pid="{i}",
            process_executable_name="java"),
    }
    everything = critical + [s for group in changed.values() for s in group]

    def samples(k: int) -> list[tuple[int, float]]:
        return [(stamps[0], float(k % 7)), (stamps[1], float(k % 7 + 1))]

    body = write_request([(labels, samples(k)) for k, labels in enumerate(everything)])
    sent = {frozenset(labels): samples(k) for k, labels in enumerate(everything[:len(critical)])}
    target = 1
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, replicas.metrics_url(target))
        await post_write(session, replicas.write_url(target), body, tenant)
        after = await scrape(session, replicas.metrics_url(target))

    def delta(action: str) -> float:
        return (after.value("phoenix_policy_points_total", tenant=tenant, action=action)
                - before.value("phoenix_policy_points_total", tenant=tenant, action=action))

    # Every critical point passes. Of the others, the 200 bomb series past the cap overflow
    # and the rest merge or pass (test_series_without_per_request_labels_pass_unchanged has
    # which); none is dropped.
    n_critical, n_other = len(critical), len(everything) - len(critical)
    assert delta("passed") >= 2 * n_critical
    assert delta("passed") + delta("merged") == 2 * (n_critical + n_other - 200)
    assert delta("merged") >= 2 * (50 + 20)
    assert (delta("overflowed"), delta("dropped")) == (2 * 200, 0)
    first_bomb = everything.index(changed["crit_mix_bomb_total"][0])
    overflow_sum = sum(samples(k)[1][1] for k in range(first_bomb + CAP, first_bomb + 1_200))

    deadline = time.monotonic() + 20
    while True:
        got = await asyncio.to_thread(victoria_metrics.export_series, f'{{job="{job}"}}')
        arrived = {series_labels(s): list(zip(s["timestamps"], s["values"], strict=True))
                   for s in got}
        intact = [k for k, v in sent.items() if sorted(arrived.get(k, ())) == sorted(v)]
        if len(intact) == len(sent) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    with_replica = [k for k in arrived if ("phoenix_priority", "critical") in k
                    and any(n == "phoenix_replica" for n, _ in k)]
    overflow = await asyncio.to_thread(
        victoria_metrics.query_until,
        'last_over_time(crit_mix_bomb_total{otel_metric_overflow="true"}[5m])',
        lambda r: len(r) == 1 and float(r[0]["value"][1]) == overflow_sum, timeout=15)
    print(f"\n[critical under aggressive] {len(intact):,}/{len(sent):,} critical series "
          f"({2 * len(intact):,} samples) arrived with the same labels, timestamps and values "
          f"(1,200 'up' series against a cap of {CAP:,}); meanwhile the profile merged "
          f"{delta('merged'):.0f} points and overflowed {delta('overflowed'):.0f} "
          f"(crit_mix_bomb_total's overflow series "
          f"{overflow[0]['metric'].get('phoenix_replica')} = {overflow_sum:.0f}, exact)")
    assert len(intact) == len(sent), sorted(set(sent) - set(intact))[:5]
    assert with_replica == []


async def test_series_without_per_request_labels_pass_unchanged(
        replicas: PipelineReplicas, etcd: Etcd, victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    """Under ``aggressive``, series that carry none of the labels it merges away (and stay
    within its cap) are forwarded as they came: counted as passed, same labels in the
    backend, no ``phoenix_replica``, the sender's timestamps and values.

    Found by this file: up to 6a509d9, Plan.route sent every series an enforced aggregate
    policy matched to its merge target, even when no label was removed, so under balanced
    and aggressive every non-critical series was re-labelled with phoenix_replica and
    re-stamped at the aggregate's 15 s flush (profiles.py: "Series without these labels are
    unchanged")."""
    await use_profile(replicas, etcd, "aggressive")
    tenant, job = "e2e-untouched", "untouched-e2e"
    now = int(time.time() * 1000)
    sent = {}
    for i in range(10):
        for name in ("untouched_queue_depth", "untouched_requests_total"):
            labels = (("__name__", name), ("instance", f"host-{i}"), ("job", job))
            sent[frozenset(labels)] = [(now, float(i + 1))]
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, replicas.metrics_url(0))
        await post_write(session, replicas.write_url(0),
                         write_request([(sorted(k), v) for k, v in sent.items()]), tenant)
        after = await scrape(session, replicas.metrics_url(0))
    moved = {action: after.value("phoenix_policy_points_total", tenant=tenant, action=action)
             - before.value("phoenix_policy_points_total", tenant=tenant, action=action)
             for action in ("passed", "merged", "overflowed", "dropped")}
    print(f"\n[aggressive, series without per-request labels] points by action: {moved}")
    assert moved == {"passed": 20, "merged": 0, "overflowed": 0, "dropped": 0}
    deadline = time.monotonic() + 10
    while True:
        got = await asyncio.to_thread(victoria_metrics.export_series, f'{{job="{job}"}}')
        arrived = {series_labels(s): list(zip(s["timestamps"], s["values"], strict=True))
                   for s in got}
        if arrived == sent or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert arrived == sent

"""PipelineService's policy, profile, stats and dry-run API on a real metrics-pipeline replica
(a process, against the session's NATS and etcd), called over mTLS with the operator's
certificate; and ``phoenixctl policy`` against the same replica.

Every test works on a tenant of its own, so the shared etcd holds nothing another test reads;
the replica closes a window every second so dry-runs and stats need no long waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from phoenixcp.api.phoenix.v1 import (
    common_pb2,
    pipeline_pb2,
    pipeline_pb2_grpc,
    state_pb2,
)
from phoenixcp.cli.stack import ENDPOINTS_FILE, Backend, ServiceProcess
from phoenixcp.core.identity import OPERATOR, service, spiffe_id
from phoenixcp.platform.embedded import EmbeddedEtcd, EmbeddedNats
from phoenixcp.platform.export.sink import CountingSink
from phoenixcp.platform.rpc import health_status, secure_channel
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY
from phoenixcp.platform.tls import CertBundle, LocalCA
from tests.integration._pipeline_support import post, snappy, write_request

pytestmark = pytest.mark.integration

HOUR = dt.timedelta(hours=1)
BOMB = "checkout_requests_total"


@dataclass(frozen=True)
class Replica:
    address: str
    operator: CertBundle
    remote_write: str
    state_dir: Path


async def _serving(proc: ServiceProcess, operator: CertBundle, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.exit_code() is not None:
            pytest.fail(f"metrics-pipeline exited during start-up:\n{proc.log_tail(40)}")
        record = proc.read_announcement()
        if record and await health_status(record["grpc"], operator) == "SERVING":
            return str(record["grpc"])
        await asyncio.sleep(0.1)
    pytest.fail(f"metrics-pipeline did not report SERVING:\n{proc.log_tail(40)}")


@pytest.fixture(scope="module")
async def replica(nats_server: EmbeddedNats, etcd_server: EmbeddedEtcd,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Replica]:
    state_dir = tmp_path_factory.mktemp("policy-api")
    operator = LocalCA.open(state_dir / "ca").issue(OPERATOR, ttl=HOUR)
    ca, cert, key = operator.write(state_dir / "tls", OPERATOR)
    sink = CountingSink()
    await sink.start()
    proc = ServiceProcess(service("metrics-pipeline"), 0, state_dir)
    proc.write_config(nats_url=nats_server.url, etcd_endpoint=etcd_server.endpoint, pipeline={
        "otlp_grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0",
        "exporters": [Backend("remote-write", sink.url).exporter(0)],
        "window_interval": "1s"})
    proc.start(python=sys.executable)
    try:
        address = await _serving(proc, operator)
        # What `phoenixctl up` writes, so the CLI finds this replica and its certificate.
        (state_dir / ENDPOINTS_FILE).write_text(json.dumps({
            "services": {"metrics-pipeline": [{"grpc": address}]},
            "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)}}), encoding="utf-8")
        yield Replica(address, operator, proc.announced["ingest"]["remote_write"], state_dir)
    finally:
        proc.terminate()
        proc.wait_or_kill(time.monotonic() + 15)
        await sink.stop()


@pytest.fixture
def tenant() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def api(replica: Replica) -> AsyncIterator[pipeline_pb2_grpc.PipelineServiceAsyncStub]:
    async with secure_channel(replica.address, replica.operator) as channel:
        yield pipeline_pb2_grpc.PipelineServiceStub(channel)


def cap_policy(tenant: str, n: int = 100, pid: str = "cap-checkout") -> state_pb2.Policy:
    return state_pb2.Policy(id=pid, tenant=tenant, reason="user_id bomb",
                            match=common_pb2.MetricSelector(metric_name=BOMB),
                            cap=state_pb2.SeriesCapAction(max_series=n))


def detail(error: grpc.aio.AioRpcError) -> common_pb2.ErrorDetail:
    trailers = dict(error.trailing_metadata() or ())
    return common_pb2.ErrorDetail.FromString(trailers[ERROR_DETAIL_KEY])


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_apply_get_list_delete(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, tenant: str
) -> None:
    created = await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=cap_policy(tenant)))
    assert created.created and created.policy.generation == 1
    assert created.policy.author == spiffe_id(OPERATOR)  # the caller, from its certificate
    assert created.policy.HasField("create_time") and created.policy.HasField("update_time")

    again = await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=cap_policy(tenant)))
    assert not again.created and again.policy == created.policy  # nothing to change

    changed = await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(
        policy=cap_policy(tenant, 200), expected_generation=1))
    assert not changed.created and changed.policy.generation == 2
    stale = await refused(api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(
        policy=cap_policy(tenant, 300), expected_generation=1)))
    assert stale.code() == grpc.StatusCode.ABORTED, stale.details()

    got = await api.GetPolicy(pipeline_pb2.GetPolicyRequest(tenant=tenant, id="cap-checkout"))
    assert got.policy == changed.policy and got.policy.cap.max_series == 200
    listed = await api.ListPolicies(pipeline_pb2.ListPoliciesRequest(tenant=tenant))
    assert list(listed.policies) == [changed.policy] and not listed.next_page_token

    deleted = await api.DeletePolicy(pipeline_pb2.DeletePolicyRequest(
        tenant=tenant, id="cap-checkout", reason="bomb is over"))
    assert deleted.policy == changed.policy
    gone = await refused(api.GetPolicy(pipeline_pb2.GetPolicyRequest(tenant=tenant,
                                                                     id="cap-checkout")))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert gone.details() == f"policy {tenant}/cap-checkout does not exist"
    assert not (await api.ListPolicies(pipeline_pb2.ListPoliciesRequest(tenant=tenant))).policies


async def test_list_pages_through_policies(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, tenant: str
) -> None:
    for i in range(5):
        await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(
            policy=cap_policy(tenant, 10 + i, pid=f"cap-{i}")))
    seen: list[str] = []
    token = ""
    while True:
        reply = await api.ListPolicies(pipeline_pb2.ListPoliciesRequest(
            tenant=tenant, page_size=2, page_token=token))
        seen += [p.id for p in reply.policies]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [f"cap-{i}" for i in range(5)]
    foreign = await refused(api.ListPolicies(pipeline_pb2.ListPoliciesRequest(
        tenant=tenant, page_size=2, page_token="bm90LWEtdG9rZW4=")))
    assert foreign.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(foreign).violations[0].field == "page_token"


def _bad(tenant: str, **fields: Any) -> state_pb2.Policy:
    policy = cap_policy(tenant)
    for name, value in fields.items():
        if name == "match":
            policy.match.CopyFrom(value)
        elif name == "aggregate":
            policy.aggregate.CopyFrom(value)
        else:
            getattr(policy, name).CopyFrom(value)
    return policy


BAD = {
    "invalid-regex": (lambda t: _bad(t, match=common_pb2.MetricSelector(
        metric_name_regex="checkout_(requests")),
        "policy.match.metric_name_regex", "is not a valid regular expression"),
    "unknown-metric-type": (lambda t: _bad(t, match=common_pb2.MetricSelector(
        metric_name=BOMB, metric_type=common_pb2.MetricType.ValueType(42))),
        "policy.match.metric_type", "unknown metric type 42"),
    "by-and-without": (lambda t: _bad(t, aggregate=state_pb2.AggregateAction(
        by=["job"], without=["user_id"])),
        "policy.aggregate", "not both"),
    "cap-0": (lambda t: _bad(t, cap=state_pb2.SeriesCapAction(max_series=0)),
              "policy.cap.max_series", "must be at least 1, got 0"),
    "invalid-label-name": (lambda t: _bad(t, aggregate=state_pb2.AggregateAction(
        without=["user-id"])),
        "policy.aggregate.without[0]", "label name 'user-id' does not match"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_policy_is_refused_with_its_field_and_changes_nothing(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, tenant: str, case: str
) -> None:
    make, field, message = BAD[case]
    kept = await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(
        policy=cap_policy(tenant, pid="kept")))
    policy = make(tenant)
    for call in (api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy)),
                 api.DryRunPolicy(pipeline_pb2.DryRunPolicyRequest(policy=policy))):
        error = await refused(call)
        print(f"{case}: {error.code().name}: {error.details()}")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.details()
        info = detail(error)
        assert info.reason == common_pb2.ERROR_REASON_VALIDATION_FAILED
        assert [(v.field, message in v.description) for v in info.violations] == [(field, True)]
    listed = await api.ListPolicies(pipeline_pb2.ListPoliciesRequest(tenant=tenant))
    assert list(listed.policies) == [kept.policy]


async def test_several_violations_are_listed_together(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, tenant: str
) -> None:
    policy = _bad(tenant, match=common_pb2.MetricSelector(metric_name_regex="("),
                  aggregate=state_pb2.AggregateAction(without=["user-id"]))
    error = await refused(api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy)))
    assert [v.field for v in detail(error).violations] == [
        "policy.match.metric_name_regex", "policy.aggregate.without[0]"]


async def test_profiles_and_an_unknown_active_profile(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, tenant: str
) -> None:
    listed = await api.ListProfiles(pipeline_pb2.ListProfilesRequest())
    names = [p.name for p in listed.profiles]
    assert {"full", "conservative", "balanced", "aggressive", "experimental"} <= set(names)
    assert any(not a.tenant for a in listed.active)  # the default pointer, stored or implicit

    error = await refused(api.SetActiveProfile(pipeline_pb2.SetActiveProfileRequest(
        tenant=tenant, profile_name="turbo")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("profile 'turbo' does not exist; the profiles are: ")
    assert all(name in error.details() for name in names)
    still = await api.GetActiveProfile(pipeline_pb2.GetActiveProfileRequest(tenant=tenant))
    assert still.inherited

    switched = await api.SetActiveProfile(pipeline_pb2.SetActiveProfileRequest(
        tenant=tenant, profile_name="aggressive", reason="budget 92% used"))
    assert switched.active.profile_name == "aggressive"
    assert switched.active.set_by == spiffe_id(OPERATOR)
    assert switched.previous_profile_name == still.active.profile_name
    now = await api.GetActiveProfile(pipeline_pb2.GetActiveProfileRequest(tenant=tenant))
    assert now.active == switched.active and not now.inherited
    builtin = await refused(api.DeleteProfile(pipeline_pb2.DeleteProfileRequest(name="full")))
    assert builtin.code() == grpc.StatusCode.FAILED_PRECONDITION, builtin.details()
    await api.SetActiveProfile(pipeline_pb2.SetActiveProfileRequest(tenant=tenant))  # back


def bomb_body(users: int, round_: int) -> bytes:
    """``users`` series of one counter, one per user_id over two jobs, plus one quiet
    series of another metric; one sample each, timestamped by round."""
    stamp = int(time.time() * 1000) + round_
    series: list[tuple[list[tuple[str, str]], list[tuple[int, float]]]] = [
        ([("__name__", BOMB), ("job", f"shop-{i % 2}"), ("user_id", f"u{i}")],
         [(stamp, float(round_ + 1))]) for i in range(users)]
    series.append(([("__name__", "up"), ("job", "shop-0")], [(stamp, 1.0)]))
    return snappy(write_request(series))


@contextlib.asynccontextmanager
async def sending(replica: Replica, tenant: str, users: int) -> AsyncIterator[None]:
    """Send the bomb every 200 ms, so every one-second window holds all of it."""
    async def loop() -> None:
        round_ = 0
        while True:
            status, _, text = await post(replica.remote_write, bomb_body(users, round_),
                                         headers={"X-Scope-OrgID": tenant})
            assert status == 204, text
            round_ += 1
            await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until_window(api: pipeline_pb2_grpc.PipelineServiceAsyncStub,
                       request: pipeline_pb2.DryRunPolicyRequest,
                       before: int) -> pipeline_pb2.DryRunPolicyResponse:
    deadline = time.monotonic() + 20
    last = ""
    while True:
        try:
            reply = await api.DryRunPolicy(request)
            if reply.estimated_series_before == before:
                return reply
            last = f"{reply.estimated_series_before} series before"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            last = exc.details() or ""
        assert time.monotonic() < deadline, f"no window with the whole bomb in 20s: {last}"
        await asyncio.sleep(0.2)


async def test_dry_run_of_a_user_id_bomb(
    api: pipeline_pb2_grpc.PipelineServiceAsyncStub, replica: Replica, tenant: str
) -> None:
    no_window = await refused(api.DryRunPolicy(pipeline_pb2.DryRunPolicyRequest(
        policy=cap_policy(tenant))))
    assert no_window.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "send its traffic here and wait one window (1s)" in no_window.details()
    assert detail(no_window).reason == common_pb2.ERROR_REASON_NO_DATA

    aggregate = state_pb2.Policy(
        id="drop-user-id", tenant=tenant, match=common_pb2.MetricSelector(metric_name=BOMB),
        aggregate=state_pb2.AggregateAction(without=["user_id"]))
    async with sending(replica, tenant, users=600):
        merged = await until_window(api, pipeline_pb2.DryRunPolicyRequest(
            policy=aggregate, max_examples=5), before=600)
        capped = await until_window(api, pipeline_pb2.DryRunPolicyRequest(
            policy=cap_policy(tenant, 100)), before=600)
        stats = await api.GetStats(pipeline_pb2.GetStatsRequest(tenant=tenant))
        metrics = await api.ListMetricStats(pipeline_pb2.ListMetricStatsRequest(
            tenant=tenant, page_size=1))

    # Counts are over the window's sample of series (all of them when few), estimates
    # for all 600: two output series, one per job.
    sampled = merged.series_before_sample
    assert 0 < sampled <= 600 and merged.matched_series_sample == sampled
    assert (merged.series_after_sample, merged.estimated_series_after) == (2, 2.0)
    assert len(merged.merged_groups) == 2
    assert sum(g.sampled_inputs for g in merged.merged_groups) == sampled
    group = merged.merged_groups[0]
    assert group.metric_name == BOMB
    assert {label.name for label in group.output_labels} == {"job", "phoenix_replica"}
    assert len(group.example_inputs) == 3 and merged.dropped_series_sample == 0
    assert merged.replica.replica_id == "metrics-pipeline-0"
    assert merged.window.end_time.ToDatetime() > merged.window.start_time.ToDatetime()

    kept = capped.series_after_sample - 1  # the rest share one overflow series
    assert capped.overflowed_series_sample == capped.series_before_sample - kept
    assert capped.merged_groups[0].sampled_inputs == capped.overflowed_series_sample
    assert 100 <= capped.estimated_series_after <= 103  # 100 kept + overflow (rounding)
    assert {(label.name, label.value) for label in capped.merged_groups[0].output_labels} >= {
        ("otel_metric_overflow", "true")}

    # The same window, as stats: every series passed (no policy is applied to the tenant).
    [mine] = stats.tenants
    assert mine.tenant == tenant and mine.input_series == 601 == mine.output_series
    assert mine.total.received >= mine.last_window.received > 0
    assert stats.replica.address == replica.address and stats.replica_count >= 1
    assert [e.name for e in stats.exporters] == ["remote-write-0"]
    assert [m.metric_name for m in metrics.metrics] == [BOMB] and metrics.next_page_token
    assert metrics.metrics[0].input_series == 600

    # The traffic stopped: once an empty window closes, a dry run says so (not "0 → 0").
    deadline = time.monotonic() + 10
    while True:
        try:
            await api.DryRunPolicy(pipeline_pb2.DryRunPolicyRequest(policy=aggregate))
        except grpc.aio.AioRpcError as exc:
            if "saw no series" in (exc.details() or ""):
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                break
        assert time.monotonic() < deadline, "no empty window within 10s"
        await asyncio.sleep(0.2)


def phoenixctl(replica: Replica, *args: str, stdin: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phoenixcp.cli", *args, "--state-dir", str(replica.state_dir)],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def policy_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cap.yaml"
    path.write_text(
        "id: cap-checkout\n"
        "reason: user_id bomb\n"
        f"match: {{metric_name: {BOMB}}}\n"
        "cap: {max_series: 1000, idle_timeout: 5m}\n", encoding="utf-8")
    yield path


async def test_phoenixctl_policy_apply_and_list(
    replica: Replica, tenant: str, policy_file: Path, tmp_path: Path
) -> None:
    applied = await asyncio.to_thread(phoenixctl, replica, "policy", "apply", str(policy_file),
                                      "--tenant", tenant)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == f"policy {tenant}/cap-checkout created (generation 1)\n"
    again = await asyncio.to_thread(phoenixctl, replica, "policy", "apply", str(policy_file),
                                    "--tenant", tenant)
    assert again.stdout == f"policy {tenant}/cap-checkout unchanged (generation 1)\n"

    listed = await asyncio.to_thread(phoenixctl, replica, "policy", "list", "--tenant", tenant,
                                     "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [policy] = json.loads(listed.stdout)
    assert (policy["tenant"], policy["id"], policy["cap"]) == (
        tenant, "cap-checkout", {"max_series": "1000", "idle_timeout": "300s"})

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"id: cap-zero\nmatch: {{metric_name: {BOMB}}}\ncap: {{max_series: 0}}\n",
                   encoding="utf-8")
    refused_ = await asyncio.to_thread(phoenixctl, replica, "policy", "apply", str(bad),
                                       "--tenant", tenant)
    assert refused_.returncode == 2
    assert "INVALID_ARGUMENT" in refused_.stderr
    assert ("INVALID_ARGUMENT: policy.cap.max_series: must be at least 1, got 0"
            in refused_.stderr)

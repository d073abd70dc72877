"""``phoenixctl policy apply|list|delete|dry-run``: a tenant's policies through any
metrics-pipeline replica (writes land in etcd; every replica applies them within a second).

::

    phoenixctl policy apply cap-users.yaml --tenant acme    # one Policy, a list, or ---
    phoenixctl policy dry-run cap-users.yaml --tenant acme  # what it would do, nothing stored
    phoenixctl policy list --tenant acme -o json
    phoenixctl policy delete cap-users --tenant acme --reason "bomb is over"
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from phoenixcp.api.phoenix.v1 import (
    common_pb2,
    pipeline_pb2,
    state_pb2,
    telemetry_pb2,
)
from phoenixcp.cli.remote import (
    Target,
    as_json,
    call_pipeline,
    load_policies,
    print_json,
    report_rpc_error,
    run_remote,
)
from phoenixcp.cli.table import table_lines

if TYPE_CHECKING:
    from phoenixcp.api.phoenix.v1.pipeline_pb2_grpc import PipelineServiceAsyncStub as Stub

__all__ = ["describe_action", "describe_match", "run_policy", "show_series"]

_TIMEOUT = 30.0
_OPS = {common_pb2.MATCH_OPERATOR_EQUAL: "=", common_pb2.MATCH_OPERATOR_NOT_EQUAL: "!=",
        common_pb2.MATCH_OPERATOR_REGEX: "=~", common_pb2.MATCH_OPERATOR_NOT_REGEX: "!~"}


def show_series(metric: str, labels: Sequence[common_pb2.Label]) -> str:
    """``metric{a="1",b="2"}`` (PromQL's notation)."""
    inner = ",".join(f'{label.name}="{label.value}"' for label in labels)
    return f"{metric}{{{inner}}}"


def describe_match(selector: common_pb2.MetricSelector) -> str:
    name = selector.WhichOneof("metric")
    parts = [] if name is None else [
        selector.metric_name if name == "metric_name" else f"~{selector.metric_name_regex}"]
    parts += [f'{m.name}{_OPS.get(m.operator, "?")}"{m.value}"' for m in selector.matchers]
    if selector.metric_type:
        parts.append(common_pb2.MetricType.Name(selector.metric_type)
                     .removeprefix("METRIC_TYPE_").lower())
    return " ".join(parts) or "*"


def describe_action(policy: state_pb2.Policy) -> str:
    which = policy.WhichOneof("action")
    if which == "aggregate":
        agg = policy.aggregate
        how = f"by [{', '.join(agg.by)}]" if agg.by else f"without [{', '.join(agg.without)}]"
        return f"aggregate {how}"
    if which == "cap":
        per = "tenant" if policy.cap.scope == state_pb2.CAP_SCOPE_PER_TENANT else "metric"
        return f"cap {policy.cap.max_series}/{per}"
    if which == "top_k":
        return f"top_k {policy.top_k.k}"
    return which or "-"


def _table(rows: Sequence[Sequence[str]]) -> None:
    print("\n".join(table_lines(rows)))


async def _previous_generation(stub: Stub, policy: state_pb2.Policy) -> int:
    try:
        found = await stub.GetPolicy(pipeline_pb2.GetPolicyRequest(
            tenant=policy.tenant, id=policy.id), timeout=_TIMEOUT)
    except grpc.aio.AioRpcError:
        return 0  # not there yet, or invalid: ApplyPolicy says which
    return found.policy.generation


async def _apply(stub: Stub, policies: list[state_pb2.Policy]) -> int:
    worst = 0
    for policy in policies:
        name = f"{policy.tenant}/{policy.id}"
        try:
            previous = await _previous_generation(stub, policy)
            reply = await stub.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy),
                                           timeout=_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            worst = max(worst, report_rpc_error(f"policy apply ({name})", exc))
            continue
        stored = reply.policy
        verb = ("created" if reply.created else
                "unchanged" if stored.generation == previous else "updated")
        print(f"policy {name} {verb} (generation {stored.generation})")
    return worst


async def _list(stub: Stub, tenant: str) -> list[state_pb2.Policy]:
    out: list[state_pb2.Policy] = []
    token = ""
    while True:
        reply = await stub.ListPolicies(pipeline_pb2.ListPoliciesRequest(
            tenant=tenant, page_size=1000, page_token=token), timeout=_TIMEOUT)
        out.extend(reply.policies)
        token = reply.next_page_token
        if not token:
            return out


def _print_policies(policies: list[state_pb2.Policy], output: str,
                    now: datetime | None = None) -> None:
    """The table (or JSON) of ``policies``. MODE says ``expired`` once ``expire_time`` has
    passed: the pipeline no longer applies the policy, though it stays stored until deleted."""
    if output == "json":
        print_json([as_json(p) for p in policies])
        return
    if not policies:
        print("no policies")
        return
    now = now or datetime.now(UTC)
    rows = [("TENANT", "ID", "ACTION", "MODE", "MATCH", "GEN", "AUTHOR", "UPDATED", "EXPIRES")]
    for p in policies:
        mode = "dry_run" if p.mode == state_pb2.POLICY_MODE_DRY_RUN else "enforce"
        expires = p.expire_time.ToDatetime(tzinfo=UTC) if p.HasField("expire_time") else None
        if expires is not None and expires <= now:
            mode = "expired"
        rows.append((p.tenant, p.id, describe_action(p), mode, describe_match(p.match),
                     str(p.generation), p.author or "-",
                     _when(p.update_time) if p.HasField("update_time") else "-",
                     "-" if expires is None else _when(p.expire_time)))
    _table(rows)


def _when(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_dry_run(policy: state_pb2.Policy, reply: pipeline_pb2.DryRunPolicyResponse,
                   top: int) -> None:
    start = reply.window.start_time.ToDatetime(tzinfo=UTC)
    seconds = (reply.window.end_time.ToDatetime(tzinfo=UTC) - start).total_seconds()
    before, after = reply.series_before_sample, reply.series_after_sample
    change = f" ({(after - before) / before:+.1%})" if before else ""
    print(f"dry run of policy {policy.tenant}/{policy.id} on {reply.replica.replica_id}, "
          f"window {start:%H:%M:%S}Z + {seconds:g}s (nothing is stored)")
    print(f"  matched series:       {reply.matched_series_sample}")
    print(f"  series:               {before} → {after}{change}")
    if (reply.estimated_series_before, reply.estimated_series_after) != (before, after):
        print(f"  estimated series:     {reply.estimated_series_before:.0f} → "
              f"{reply.estimated_series_after:.0f}")
    print(f"  dropped series:       {reply.dropped_series_sample}")
    print(f"  into overflow/other:  {reply.overflowed_series_sample}")
    if reply.merged_groups:
        print(f"  top merged groups (inputs → output), {min(top, len(reply.merged_groups))} "
              f"of {len(reply.merged_groups)} shown:")
        for group in reply.merged_groups[:top]:
            print(f"    {group.sampled_inputs:>8} → "
                  f"{show_series(group.metric_name, group.output_labels)}")
    for series in reply.dropped_series[:top]:
        print(f"  would drop: {_labels_only(series)}")
    for warning in reply.warnings:
        print(f"  warning: {warning}")


def _labels_only(series: telemetry_pb2.SampledSeries) -> str:
    return show_series("", series.labels)


async def _dry_run(stub: Stub, policies: list[state_pb2.Policy], output: str,
                   max_examples: int) -> int:
    worst = 0
    replies = []
    for policy in policies:
        try:
            reply = await stub.DryRunPolicy(pipeline_pb2.DryRunPolicyRequest(
                policy=policy, max_examples=max_examples), timeout=_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            worst = max(worst, report_rpc_error(
                f"policy dry-run ({policy.tenant}/{policy.id})", exc))
            continue
        if output == "json":
            replies.append({"policy": f"{policy.tenant}/{policy.id}", **as_json(reply)})
        else:
            _print_dry_run(policy, reply, top=10)
    if output == "json":
        print_json(replies)
    return worst


async def _delete(stub: Stub, tenant: str, policy_id: str, reason: str) -> int:
    reply = await stub.DeletePolicy(pipeline_pb2.DeletePolicyRequest(
        tenant=tenant, id=policy_id, reason=reason), timeout=_TIMEOUT)
    print(f"policy {tenant}/{policy_id} deleted (it was at generation "
          f"{reply.policy.generation})")
    return 0


def run_policy(args: argparse.Namespace) -> int:
    """Run ``phoenixctl policy <action>`` as parsed in main.py; returns the exit code."""

    def work(target: Target) -> int:
        if args.action == "apply":
            policies = load_policies(args.file, args.tenant)
            return asyncio.run(call_pipeline(target, lambda s: _apply(s, policies)))
        if args.action == "dry-run":
            policies = load_policies(args.file, args.tenant)
            return asyncio.run(call_pipeline(target, lambda s: _dry_run(
                s, policies, args.output, args.max_examples)))
        if args.action == "list":
            found = asyncio.run(call_pipeline(target, lambda s: _list(s, args.tenant or "")))
            _print_policies(found, args.output)
            return 0
        return asyncio.run(call_pipeline(target, lambda s: _delete(
            s, args.tenant, args.id, args.reason)))

    return run_remote(f"policy {args.action}", args.state_dir, args.address, work)

"""``phoenixctl profile list|set``: the optimisation profiles and which one is in force.

::

    phoenixctl profile list
    phoenixctl profile set aggressive --tenant acme --reason "budget 92% used"
    phoenixctl profile set balanced                       # the default for every tenant
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from phoenixcp.api.phoenix.v1 import pipeline_pb2, state_pb2
from phoenixcp.cli.remote import (
    Target,
    as_json,
    call_pipeline,
    print_json,
    run_remote,
)
from phoenixcp.cli.table import table_lines

if TYPE_CHECKING:
    from phoenixcp.api.phoenix.v1.pipeline_pb2_grpc import PipelineServiceAsyncStub as Stub

__all__ = ["run_profile"]

_TIMEOUT = 30.0


async def _list(stub: Stub) -> tuple[list[state_pb2.Profile], list[state_pb2.ActiveProfile]]:
    profiles: list[state_pb2.Profile] = []
    active: list[state_pb2.ActiveProfile] = []
    token = ""
    while True:
        reply = await stub.ListProfiles(pipeline_pb2.ListProfilesRequest(
            page_size=1000, page_token=token), timeout=_TIMEOUT)
        profiles.extend(reply.profiles)
        active.extend(reply.active)
        token = reply.next_page_token
        if not token:
            return profiles, active


def _print_profiles(profiles: list[state_pb2.Profile], active: list[state_pb2.ActiveProfile],
                    output: str) -> None:
    if output == "json":
        print_json({"profiles": [as_json(p) for p in profiles],
                    "active": [as_json(a) for a in active]})
        return
    users: dict[str, list[str]] = {}
    for pointer in active:
        users.setdefault(pointer.profile_name, []).append(pointer.tenant or "(default)")
    rows = [("NAME", "BUILTIN", "POLICIES", "ACTIVE FOR", "DESCRIPTION")]
    for p in profiles:
        rows.append((p.name, "yes" if p.builtin else "no", str(len(p.policies)),
                     ", ".join(users.get(p.name, [])) or "-", p.description))
    print("\n".join(table_lines(rows)))


async def _set(stub: Stub, name: str, tenant: str, reason: str) -> int:
    reply = await stub.SetActiveProfile(pipeline_pb2.SetActiveProfileRequest(
        tenant=tenant, profile_name=name, reason=reason), timeout=_TIMEOUT)
    whose = f"tenant {tenant}" if tenant else "the default (every tenant without its own)"
    print(f"active profile of {whose}: {reply.previous_profile_name} → "
          f"{reply.active.profile_name}; every pipeline replica switches within a second")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Run ``phoenixctl profile <action>`` as parsed in main.py; returns the exit code."""

    def work(target: Target) -> int:
        if args.action == "list":
            profiles, active = asyncio.run(call_pipeline(target, _list))
            _print_profiles(profiles, active, args.output)
            return 0
        return asyncio.run(call_pipeline(target, lambda s: _set(
            s, args.name, args.tenant or "", args.reason)))

    return run_remote(f"profile {args.action}", args.state_dir, args.address, work)

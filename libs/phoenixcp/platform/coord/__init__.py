"""coord: leader election and replicated state in etcd, behind small ports.

::

    conn = await EtcdConnection.open(config.etcd)          # one per process
    election = LeaderElection(conn=conn, service="cost-optimizer", replica_id=rid, address=addr)
    runner = LeaderOnlyRunner(election=election, components=[controller])
    store = StateStore(conn)
    # run election.run() and runner.run() as tasks; on SIGTERM:
    await runner.shutdown(); await election.shutdown(); await conn.close()

Unit tests of other components use :class:`MemoryState` and :class:`MemoryLeadership`, which
implement the same ports (:class:`ReplicatedState`, :class:`Leadership`).
"""

from phoenixcp.platform.coord.election import LeaderElection
from phoenixcp.platform.coord.etcd import EtcdConnection
from phoenixcp.platform.coord.leader_only import LeaderOnlyRunner
from phoenixcp.platform.coord.membership import Membership
from phoenixcp.platform.coord.memory import MemoryLeadership, MemoryState
from phoenixcp.platform.coord.ports import (
    Change,
    ChangeKind,
    Fence,
    LeaderOnly,
    Leadership,
    LeadershipChange,
    ReplicatedState,
    Versioned,
)
from phoenixcp.platform.coord.store import StateStore

__all__ = [
    "Change",
    "ChangeKind",
    "EtcdConnection",
    "Fence",
    "LeaderElection",
    "LeaderOnly",
    "LeaderOnlyRunner",
    "Leadership",
    "LeadershipChange",
    "Membership",
    "MemoryLeadership",
    "MemoryState",
    "ReplicatedState",
    "StateStore",
    "Versioned",
]

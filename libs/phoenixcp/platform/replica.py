"""``phoenix.v1.ReplicaService``, served by every Phoenix process: who am I, who leads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from phoenixcp.api.phoenix.v1 import common_pb2, replica_pb2, replica_pb2_grpc
from phoenixcp.core.identity import ServiceIdentity
from phoenixcp.platform.names import service_enum

__all__ = ["REPLICA_SERVICE", "ReplicaServicer"]

REPLICA_SERVICE = "phoenix.v1.ReplicaService"


class ReplicaServicer(replica_pb2_grpc.ReplicaServiceServicer):
    """Answers GetLeader from this replica's identity and its view of the election.

    ``leadership`` returns ``(is_leader, leader_record_or_None)``; until leader election runs
    in this process it is ``(False, None)``: no leader is known, and the response says so.
    """

    def __init__(
        self,
        *,
        identity: ServiceIdentity,
        replica_id: str,
        address: Callable[[], str],
        leadership: Callable[[], tuple[bool, object | None]] = lambda: (False, None),
    ) -> None:
        self._identity = identity
        self._replica_id = replica_id
        self._address = address
        self._leadership = leadership

    async def GetLeader(
        self, request: replica_pb2.GetLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> replica_pb2.GetLeaderResponse:
        response = replica_pb2.GetLeaderResponse(
            replica=common_pb2.ReplicaIdentity(
                service=service_enum(self._identity.name),
                replica_id=self._replica_id,
                address=self._address(),
            ),
            elects_leader=self._identity.elects_leader,
        )
        is_leader, record = self._leadership()
        response.is_leader = is_leader
        if record is not None:
            response.leader.CopyFrom(record)  # type: ignore[arg-type]
        return response

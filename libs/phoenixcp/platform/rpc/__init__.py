"""gRPC for Phoenix: server builder, interceptors, mTLS credentials, client helpers."""

from phoenixcp.platform.rpc.client import health_status, secure_channel
from phoenixcp.platform.rpc.credentials import RotatingIdentity, channel_credentials
from phoenixcp.platform.rpc.errors import status_for
from phoenixcp.platform.rpc.interceptors import RpcMetrics, StatusInterceptor
from phoenixcp.platform.rpc.leader_gate import LeaderGateInterceptor
from phoenixcp.platform.rpc.server import GrpcServer, ServicerBinding

__all__ = [
    "GrpcServer",
    "LeaderGateInterceptor",
    "RotatingIdentity",
    "RpcMetrics",
    "ServicerBinding",
    "StatusInterceptor",
    "channel_credentials",
    "health_status",
    "secure_channel",
    "status_for",
]

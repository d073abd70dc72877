"""``python -m cardinality_guard --config FILE`` runs one replica of cardinality-guard."""

from phoenixcp.platform.process_setup import prepare_service_process

prepare_service_process()  # before any other import: see process_setup

from phoenixcp.platform.runner import main  # noqa: E402

if __name__ == "__main__":
    main("cardinality-guard")

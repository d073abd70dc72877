"""``python -m metrics_pipeline --config FILE`` runs one replica of metrics-pipeline."""

from phoenixcp.platform.runner import main

if __name__ == "__main__":
    main("metrics-pipeline")

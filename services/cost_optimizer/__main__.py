"""``python -m cost_optimizer --config FILE`` runs one replica of cost-optimizer."""

from phoenixcp.platform.runner import main

if __name__ == "__main__":
    main("cost-optimizer")

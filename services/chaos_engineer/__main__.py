"""``python -m chaos_engineer --config FILE`` runs one replica of chaos-engineer."""

from phoenixcp.platform.runner import main

if __name__ == "__main__":
    main("chaos-engineer")

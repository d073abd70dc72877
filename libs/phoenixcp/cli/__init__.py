"""``phoenixctl``: run a service, start the local stack, and ask it how it is."""

"""The Phoenix metrics-pipeline service.

The data path: receive OTLP and remote-write, apply policies and the active profile, export
through a durable queue, publish window reports.
"""

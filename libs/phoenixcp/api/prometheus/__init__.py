"""Generated stubs of Prometheus' remote-write schema (third_party/protos/prometheus).

Regenerate with `make protos`; never edit by hand.
"""

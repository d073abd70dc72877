"""Generated gRPC and protobuf stubs of the Phoenix contract (protos/phoenix/v1).

Everything under `phoenixcp.api.phoenix` is generated: never edit it by hand.
Change the .proto files and regenerate with `make protos`
(`python scripts/gen_protos.py`); CI fails when the stubs are stale
(`python scripts/gen_protos.py --check`).
"""

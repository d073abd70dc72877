"""The pure domain of Phoenix: no grpc, nats, etcd, hvac or generated ``*_pb2`` imports here.

tests/unit/test_layering.py keeps it so.
"""

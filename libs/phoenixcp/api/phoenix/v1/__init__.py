"""Generated stubs of package `phoenix.v1`; regenerate with `make protos`."""

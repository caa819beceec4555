"""digit-serving: the gRPC inference service, its client and tools."""

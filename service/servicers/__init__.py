"""gRPC servicers: thin adapters between each API's protobuf messages and the inference core."""

"""The gRPC transport: the server's wiring, statuses, authentication and one thin adapter per API."""

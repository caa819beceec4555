"""`digits loadtest`: drives any deployment of the service, or any Open Inference Protocol server, with
real MNIST payloads over gRPC (unary or streaming, `kserve_v2` or `digits_v1`) or the protocol's
REST API (`kserve_v2_rest`, JSON or binary tensors, over its own small HTTP/1.1 client), with TLS,
mutual TLS and a bearer token when the target wants them, and reports throughput, latency
percentiles and errors by gRPC status or HTTP status.

It lives in `service` because it speaks the service's APIs through the generated stubs and the
contract, but it never imports the server: it is a client that users point at their own
deployments, and the benchmark (`bench/`) reuses it so that the floor and the service are measured
by the same code.
"""

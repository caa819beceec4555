"""`digits loadtest`: drives any deployment of the service with real MNIST payloads and reports
throughput, latency percentiles and errors by gRPC status.

It lives in `service` because it speaks the service's two gRPC APIs through the generated stubs,
but it never imports the server: it is a client that users point at their own deployments, and the
benchmark (`bench/`) reuses it so that the floor and the service are measured by the same code.
"""

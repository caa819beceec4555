"""The server side: inference core, batching, runtime, validation, metrics, lifecycle and transports.

Nothing under `service.client` or `service.loadtest` imports this package; they share only the
contract (`service.contract`) and the generated stubs.
"""

"""The client side: the `DigitClient` library, MNIST-style preprocessing, the MNIST file reader and
`digits classify`. It imports nothing of the server, so it installs without onnxruntime."""

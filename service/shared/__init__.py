"""Neutral pieces both sides import: MNIST-style preprocessing of a picture of a digit, and the
reader of MNIST's IDX files. Neither knows of a server or a client, so the server's page and the
client's `digits classify` use one implementation each, and the client install imports no server code."""

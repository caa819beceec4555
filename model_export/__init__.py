"""The digit network: defined, trained and checked in NumPy, exported to ONNX for serving.

Modules, each with one job:

* `network`     - the MLP itself (layer sizes, activations, forward pass, parameter count);
* `params`      - the `.npz` parameters file (save, load, validate);
* `mnist`       - the MNIST IDX files (parse, SHA-256 verification, clear failures);
* `train`       - backpropagation, softmax cross-entropy, mini-batch Adam;
* `onnx_export` - the ONNX graph every consumer (the service, Triton, ...) loads;
* `evaluate`    - test-set accuracy of an exported model through onnxruntime;
* `model_card`  - the human-readable card shipped next to a model;
* `cli`         - the `digits train|export|evaluate` subcommands.

This package never imports `service`: the ONNX file is the only contract between them.
"""

"""The page at `/` and the three small JSON endpoints it uses beside the standard infer.

`POST /v1/preprocess` runs the one MNIST-style preprocessing `digits classify` uses
(`service.shared.preprocess`) on a drawing, so the page shows exactly what the network receives
and no second implementation exists in JavaScript. `GET /v1/weights` gives the first layer's
weights, the lesson's picture of what pixel pattern each neuron looks for. `GET
/v1/samples/random` gives an image of `mnist_sample/` (the first 500 MNIST test images, shipped
so that an installed server without the data set can show some).

The page files are read once at start-up. Preprocessing runs on the HTTP thread: a drawing costs
a few milliseconds, and its size is bounded before Pillow decodes it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.contract import IMAGE_SIDE
from service.server.core_types import ModelDescription
from service.server.errors import InvalidInput, ModelNotFound
from service.server.http_api.connection import Response, json_response
from service.server.http_api.weights import FirstLayers
from service.shared.mnist_files import load_test_set
from service.shared.preprocess import PreprocessError, preprocess_float32

API = "digits_rest"
PREPROCESS, WEIGHTS, SAMPLES = "/v1/preprocess", "/v1/weights", "/v1/samples/random"
ROUTES = (PREPROCESS, WEIGHTS, SAMPLES)
PAGE_DIR = Path(__file__).with_name("page")
SAMPLE_DIR = Path(__file__).with_name("mnist_sample")
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_INDEX_DIGITS = 9   # ?index=: int() of a 4,301-digit string raises, so longer ones are refused first
CONTENT_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                 ".css": b"text/css; charset=utf-8", ".png": b"image/png", ".svg": b"image/svg+xml",
                 ".ico": b"image/x-icon"}
# The page needs nothing from elsewhere; say so to the browser.
PAGE_HEADERS = ((b"Cache-Control", b"no-cache"), (b"X-Content-Type-Options", b"nosniff"),
                (b"Content-Security-Policy", b"default-src 'self'; img-src 'self' data: blob:; "
                                             b"frame-ancestors 'none'"))


def load_page_files(folder: Path = PAGE_DIR) -> dict[str, Response]:
    """Every page file as a ready response, by URL path (`/` is index.html)."""
    files: dict[str, Response] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in CONTENT_TYPES:
                files[f"/page/{path.name}"] = Response(200, path.read_bytes(), CONTENT_TYPES[path.suffix],
                                                       PAGE_HEADERS)
    if "/page/index.html" in files:
        files["/"] = files["/page/index.html"]
    return files


def preprocess(body: bytes) -> Response:
    """A picture of a digit (PNG, JPEG, ...) → the 28 × 28 float32 image the model receives."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"request body is not an image Pillow can read ({exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInput(f"image of {width} × {height} pixels is larger than {MAX_IMAGE_PIXELS} pixels; "
                           "send a smaller picture")
    try:
        pixels = preprocess_float32(body)
    except PreprocessError as exc:
        raise InvalidInput(str(exc)) from None
    return json_response({"pixels": pixels.reshape(-1), "shape": [IMAGE_SIDE, IMAGE_SIDE]})


def weights(model: ModelDescription, layers: FirstLayers) -> Response:
    layer = layers.of(model)
    if layer is None:
        raise ModelNotFound(f"model {model.name} version {model.version} has no first dense layer to show")
    matrix, biases = layer
    return json_response({"model_name": model.name, "model_version": model.version, "layer": "activation_1",
                  "shape": [len(matrix), IMAGE_SIDE, IMAGE_SIDE], "weights": matrix.reshape(-1),
                  "biases": biases})


class Samples:
    """Random images of the shipped MNIST test sample, with their labels."""

    def __init__(self, folder: Path = SAMPLE_DIR, seed: int | None = None) -> None:
        self._images, self._labels = load_test_set(folder)
        self._random = np.random.default_rng(seed)

    def random(self, query: dict[str, str]) -> Response:
        """`?index=k` picks one (for tests and links); otherwise a random one. `k` is ASCII digits
        only: str.isdigit() is also true of '²', which int() refuses."""
        count = len(self._labels)
        text = query.get("index")
        if text is None:
            index = int(self._random.integers(count))
        elif len(text) <= MAX_INDEX_DIGITS and text.isascii() and text.isdigit() and int(text) < count:
            index = int(text)
        else:
            raise InvalidInput(f"index must be an integer within 0..{count - 1}, got {text[:20]!r}")
        return json_response({"index": index, "label": int(self._labels[index]),
                      "pixels": self._images[index]})

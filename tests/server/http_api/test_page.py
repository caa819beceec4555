"""The drawing page at `/`, in a real headless Chromium against a real `digits serve --http-port 0`.

A person's strokes are played as pointer events on the canvas; what the page then shows is checked
against independent oracles: onnxruntime run here on the served model file (not the server's code)
for the probabilities and activations, `preprocess_float32` of the canvas PNG for the 28 × 28 input,
the ONNX initializer for the weight images and the MNIST test files for the random sample.

Needs Debian's `chromium` (/usr/bin/chromium; .ci/run installs it) and the `playwright` package; a
missing browser fails these tests, it never skips them.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from service.shared.preprocess import preprocess_float32
from tests.support import REPO
from tests.support.mnist import mnist_test_images, mnist_test_labels
from tests.support.server import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
TOLERANCE = 1e-5
TOKEN = "page-test-token-4f1c"
# Screenshots go here, not to tmp_path: pytest keeps only its last three temporary folders.
SCREENSHOTS = REPO / "test-output" / "page"
OUTPUTS = ("probabilities", "activation_1", "activation_2")
POSITIVE, NEGATIVE = np.array([70, 150, 255]), np.array([255, 85, 70])  # page.js's weight colours
# A 7 as fractions of the canvas: a horizontal bar, then a diagonal down to the lower left.
SEVEN = [(0.22, 0.2), (0.5, 0.2), (0.78, 0.2), (0.68, 0.42), (0.57, 0.64), (0.46, 0.86)]


@pytest.fixture(scope="module")
def http_server():
    running = RunningServer("--workers", "1", "--http-port", "0")
    assert running.http_url.startswith("http://127.0.0.1:"), running.log
    yield running
    assert running.stop() == 0, running.log


@pytest.fixture(scope="module")
def oracle(model_path):
    """The served model file run by onnxruntime here: the answers the page must show."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def run(pixels) -> dict[str, np.ndarray]:
        x = np.asarray(pixels, dtype=np.float32).reshape(1, 784)
        return dict(zip(OUTPUTS, (out[0] for out in session.run(list(OUTPUTS), {"pixels": x}))))
    return run


@pytest.fixture(scope="module")
def first_layer(model_path):
    """W1 [16, 784], the initializer feeding the first Gemm, read from the ONNX file."""
    model = onnx.load(str(model_path))
    first_gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return weights[first_gemm.input[1]]


@contextlib.contextmanager
def browser_page(viewport: dict, failures: list[str]):
    """A fresh Chromium page (not yet navigated); page errors, console errors and failed requests go to `failures`."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the page tests need Debian's chromium (apt-get install -y chromium; "
                    ".ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.on("pageerror", lambda error: failures.append(f"page error: {error}"))
            page.on("console", lambda m: m.type == "error" and failures.append(f"console: {m.text}"))
            page.on("requestfailed", lambda r: failures.append(f"request failed: {r.url} {r.failure}"))
            yield page
        finally:
            browser.close()


# Waits are given as functions, never bare expressions: playwright evaluates a bare expression with
# eval(), which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses.


def wait_ready(page) -> None:
    """Until the weights are drawn: the model name is known and the page can classify."""
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('ready')", timeout=30_000)


def updates(page) -> int:
    return int(page.evaluate("document.body.dataset.updates"))


def wait_render(page, after: int) -> None:
    """Until a render newer than `after` is on screen and nothing is left to send (idle)."""
    page.wait_for_function("n => +document.body.dataset.updates > n && document.body.dataset.busy === '0'",
                           arg=after, timeout=30_000)


def draw(page, strokes) -> None:
    """Plays one pointer stroke (mouse down, moves, up) through `strokes`, fractions of the canvas."""
    box = page.locator("#canvas").bounding_box()
    points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in strokes]
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=6)
    page.mouse.up()


def shown(page) -> dict:
    """What the page displays, as the data attributes hold it (full precision, as received)."""
    return page.evaluate("""() => {
        const values = (selector) => [...document.querySelectorAll(selector)]
            .sort((a, b) => (+a.dataset.digit || +a.dataset.index || 0) - (+b.dataset.digit || +b.dataset.index || 0))
            .map((e) => Number(e.dataset.value));
        return {
            digit: document.querySelector('#digit').textContent,
            label: document.querySelector('#label').hidden ? null : document.querySelector('#label').dataset.label,
            status: document.querySelector('#status').textContent,
            pixels: JSON.parse(document.querySelector('#input-image').dataset.pixels),
            probabilities: values('.prob-bar'),
            activation_1: values('.cell[data-layer="activation_1"]'),
            activation_2: values('.cell[data-layer="activation_2"]'),
        };
    }""")


def canvas_pixels(page, selector: str) -> np.ndarray:
    """RGBA [n, 28 * 28, 4] of the 28 × 28 canvases matching `selector`, in data-index order."""
    data = page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
        .sort((a, b) => (+a.dataset.index || 0) - (+b.dataset.index || 0))
        .map((c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data))""", selector)
    return np.asarray(data, dtype=np.int32).reshape(len(data), -1, 4)


def canvas_png(page) -> bytes:
    url = page.evaluate("document.querySelector('#canvas').toDataURL('image/png')")
    assert url.startswith("data:image/png;base64,"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def assert_matches_oracle(view: dict, oracle) -> None:
    """The displayed outputs are the model's answer for the displayed input, and the digit its argmax."""
    assert len(view["pixels"]) == 784
    expected = oracle(view["pixels"])
    for name in OUTPUTS:
        np.testing.assert_allclose(view[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=name)
    assert view["digit"] == str(int(np.argmax(expected["probabilities"])))


def screenshot(page, name: str) -> Path:
    """A full-page PNG in test-output/page/ (the folder ignores itself: git never sees it)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS.parent / ".gitignore").write_text("*\n")
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_drawing_a_seven_shows_what_the_network_computed(http_server, oracle, first_layer):
    failures: list[str] = []
    with browser_page(DESKTOP, failures) as page:
        page.goto(http_server.http_url + "/")
        wait_ready(page)
        before = updates(page)
        draw(page, SEVEN)
        wait_render(page, before)
        view = shown(page)

        assert view["digit"] == "7", view["status"]
        assert len(view["activation_1"]) == len(view["activation_2"]) == 16 and len(view["probabilities"]) == 10
        assert_matches_oracle(view, oracle)
        # The displayed input is the server's one preprocessing of exactly the canvas the page drew.
        expected_input = preprocess_float32(canvas_png(page)).ravel()
        np.testing.assert_allclose(view["pixels"], expected_input, rtol=0, atol=1e-6)
        # ... and the enlarged input image paints those pixels.
        painted = canvas_pixels(page, "#input-image")[0]
        np.testing.assert_allclose(painted[:, 0], np.round(np.asarray(view["pixels"]) * 255), atol=1)

        # Each weight image is its neuron's row of W1, blue for w > 0 and red for w < 0, scaled by max |w|.
        images = canvas_pixels(page, ".weight-image")
        assert images.shape == (16, 784, 4)
        for index, (image, weights) in enumerate(zip(images, first_layer)):
            assert (image[:, :3].max(axis=1) > 20).sum() > 100, f"weight image {index} is blank"
            strength = np.minimum(1.0, np.abs(weights.astype(np.float64)) / np.abs(weights).max())[:, None]
            colour = np.where(weights[:, None] >= 0, POSITIVE, NEGATIVE) * strength
            np.testing.assert_allclose(image[:, :3], colour, atol=1, err_msg=f"weight image {index}")

        # Hovering a layer-1 neuron shows its weights enlarged and its activation.
        page.hover('.cell[data-layer="activation_1"][data-index="5"]')
        page.wait_for_function("() => !document.querySelector('#inspector-image').hidden")
        text = page.text_content("#inspector-text")
        assert "Layer 1 neuron 5" in text and f"{view['activation_1'][5]:.4f}" in text, text
        np.testing.assert_array_equal(canvas_pixels(page, "#inspector-image")[0], images[5])
        screenshot(page, "page-desktop-seven")
        page.hover('.cell[data-layer="activation_2"][data-index="9"]')
        text = page.text_content("#inspector-text")
        assert "Layer 2 neuron 9" in text and f"{view['activation_2'][9]:.4f}" in text, text

        # Clear empties the result; the blank canvas is not sent as an error.
        page.click("#clear")
        assert page.text_content("#digit") == "–"
        assert "draw a digit" in page.text_content("#status").lower()
    assert not failures, failures


def test_random_test_digit_shows_its_label_and_the_models_answer(http_server, oracle):
    images, labels = mnist_test_images(), mnist_test_labels()
    failures: list[str] = []
    with browser_page(DESKTOP, failures) as page:
        page.goto(http_server.http_url + "/")
        wait_ready(page)
        for _ in range(2):   # twice: a second sample replaces the first
            before = updates(page)
            page.click("#random")
            wait_render(page, before)
            view = shown(page)
            assert view["label"] is not None, view["status"]
            assert page.is_visible("#label")
            assert_matches_oracle(view, oracle)
            # The sample is a real MNIST test image, shown with its own label.
            sample = np.rint(np.asarray(view["pixels"]) * 255).astype(np.uint8)
            found = np.flatnonzero((images == sample).all(axis=1))
            assert found.size, "the displayed sample is no MNIST test image"
            assert int(view["label"]) in labels[found], (view["label"], labels[found])
        screenshot(page, "page-random")
    assert not failures, failures


def draw_a_seven(page, oracle) -> dict:
    """Draws the 7, waits for the answer, and checks it is a 7 with the model's own numbers."""
    before = updates(page)
    draw(page, SEVEN)
    wait_render(page, before)
    view = shown(page)
    assert view["digit"] == "7", view["status"]
    assert_matches_oracle(view, oracle)
    return view


def test_phone_sized_screen_draws_and_nothing_overflows(http_server, oracle):
    failures: list[str] = []
    with browser_page(PHONE, failures) as page:
        page.goto(http_server.http_url + "/")
        wait_ready(page)
        assert page.evaluate("getComputedStyle(document.querySelector('#canvas')).touchAction") == "none"
        draw_a_seven(page, oracle)
        width = page.evaluate("document.documentElement.scrollWidth")
        path = screenshot(page, "page-phone")
        assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen ({path})"
    assert not failures, failures


def test_with_a_token_the_page_asks_once_then_draws(tmp_path, oracle):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = RunningServer("--workers", "1", "--http-port", "0", "--auth-token-file", str(token_file))
    try:
        failures: list[str] = []
        with browser_page(DESKTOP, failures) as page:
            api_requests = []
            page.on("request", lambda r: ("/v1/" in r.url or "/v2/" in r.url) and api_requests.append(r))
            page.goto(server.http_url + "/")
            page.wait_for_selector("#token-dialog[open]", timeout=30_000)
            page.fill("#token-input", TOKEN)
            page.click("#token-submit")
            wait_ready(page)
            assert not page.is_visible("#token-dialog")
            draw_a_seven(page, oracle)
            assert page.evaluate(f"sessionStorage.getItem('digit-serving.token') === {json.dumps(TOKEN)}")
            # Asked once: only the very first call went without the token; every later one carried it.
            without = [r.url for r in api_requests if r.headers.get("authorization") != f"Bearer {TOKEN}"]
            assert len(without) == 1 and without[0].endswith("/v1/weights"), without
            assert len(api_requests) >= 4, [r.url for r in api_requests]
        # 401 answers are expected here; anything else logged is a failure.
        assert all("401" in failure for failure in failures), failures
    finally:
        assert server.stop() == 0, server.log

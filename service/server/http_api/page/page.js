// digit-serving page: draw a digit, let the server preprocess and classify it, and show what
// the network computed. Plain browser JavaScript, no framework, nothing fetched from elsewhere.
//
// The page never preprocesses: it sends the canvas as a PNG to /v1/preprocess and shows the
// 28 × 28 image the server made of it, so what you see is exactly what the network got.
"use strict";

const SIDE = 28;                     // the network's input is SIDE × SIDE pixels
const NEURONS = 16;                  // width of each hidden layer
const THROTTLE_MS = 150;             // at most one classification per this many ms while drawing
const STROKE_WIDTH = 20;             // in drawing-canvas pixels (280 wide): about 2 px after scaling to 20 × 20
const TOKEN_KEY = "digit-serving.token";

const POSITIVE = [70, 150, 255];     // weight colours: blue for w > 0 ...
const NEGATIVE = [255, 85, 70];      // ... red for w < 0, on black for w = 0

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  model: null,        // {name, version, weights: Float32Array(16 × 784), biases, maxAbs} from /v1/weights
  modelReady: null,   // the promise of `model` while loading or loaded (see ensureModel)
  result: null,       // the last rendered {pixels, outputs, label}
  selected: null,     // {layer, index} of the inspected neuron
  generation: 0,      // bumped by Clear and Random: answers for an older input are dropped
  hasInk: false,      // anything drawn since the last Clear
  updates: 0,
};

const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------- status line

function setStatus(text, kind = "info") {
  const status = $("#status");
  status.textContent = text;
  status.dataset.kind = kind;
}

// ---------------------------------------------------------------- API calls

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The one prompt for a token: concurrent 401s share it instead of opening one dialog each.
let tokenPrompt = null;

function askToken(reason) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const dialog = $("#token-dialog");
      $("#token-reason").textContent = reason;
      $("#token-input").value = "";
      dialog.addEventListener("close", () => {
        tokenPrompt = null;
        const token = dialog.returnValue === "ok" ? $("#token-input").value.trim() : "";
        resolve(token);
      }, { once: true });
      dialog.showModal();
    });
  }
  return tokenPrompt;
}

function setupTokenDialog() {
  const dialog = $("#token-dialog");
  $("#token-cancel").addEventListener("click", () => dialog.close("cancel"));
  // Escape closes a modal dialog without a return value: treat it as Cancel.
  dialog.addEventListener("cancel", () => { dialog.returnValue = "cancel"; });
}

// fetch() that answers parsed JSON or throws ApiError with the server's {"error": ...} text.
// On 401 it asks for the bearer token (once per refusal) and retries with it.
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { ...(options.headers || {}) };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, `cannot reach the server (${error.message})`);
    }
    if (response.status === 401 && attempt < 3) {
      const reason = state.token ? "The server refused that token. Try again:" : "This server asks for a bearer token.";
      const token = await askToken(reason);
      if (!token) throw new ApiError(401, "a bearer token is needed: the next request asks for it again");
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      continue;
    }
    return readJson(response);
  }
}

async function readJson(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    if (response.ok) throw new ApiError(response.status, "the server's answer is not JSON");
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new ApiError(response.status, `${response.status}: ${message || "request failed"}`);
  }
  return body;
}

const postJson = (path, value) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });

// ---------------------------------------------------------------- model: weights and inference

// The model's name and first-layer weights, loaded once; a failed load (say, no token given) is
// tried again by the next call instead of leaving the page stuck.
function ensureModel() {
  if (!state.modelReady) {
    state.modelReady = loadModel().then((model) => {
      state.model = model;
      paintAllWeights();
      showInspector();
      return model;
    }, (error) => {
      state.modelReady = null;
      throw error;
    });
  }
  return state.modelReady;
}

async function loadModel() {
  const answer = await api("/v1/weights");
  const weights = Float32Array.from(answer.weights);
  if (weights.length !== NEURONS * SIDE * SIDE) throw new ApiError(200, `expected ${NEURONS}×784 weights, got ${weights.length}`);
  const maxAbs = [];
  for (let n = 0; n < NEURONS; n++) {
    maxAbs.push(weights.subarray(n * SIDE * SIDE, (n + 1) * SIDE * SIDE).reduce((m, w) => Math.max(m, Math.abs(w)), 0));
  }
  return { name: answer.model_name, version: answer.model_version, weights, biases: answer.biases, maxAbs };
}

function neuronWeights(index) {
  const size = SIDE * SIDE;
  return state.model.weights.subarray(index * size, (index + 1) * size);
}

// Runs the model on 784 pixels; `datatype` "FP32" (0..1) or "UINT8" (0..255). Returns outputs by name.
async function infer(pixels, datatype) {
  const model = await ensureModel();
  const answer = await postJson(`/v2/models/${encodeURIComponent(model.name)}/infer`, {
    inputs: [{ name: "pixels", shape: [1, SIDE * SIDE], datatype, data: pixels }],
  });
  const outputs = {};
  for (const output of answer.outputs || []) outputs[output.name] = output.data;
  for (const name of ["probabilities", "activation_1", "activation_2"]) {
    if (!Array.isArray(outputs[name])) throw new ApiError(200, `the answer has no "${name}" output`);
  }
  return outputs;
}

// ---------------------------------------------------------------- drawing canvas

const drawing = { canvas: null, context: null, pointer: null, last: null };

function setupDrawing() {
  const canvas = $("#canvas");
  drawing.canvas = canvas;
  drawing.context = canvas.getContext("2d");
  clearDrawing();
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", continueStroke);
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
}

function clearDrawing() {
  const { context, canvas } = drawing;
  // An opaque black page: a PNG with transparency would be composited onto white server-side.
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = "#fff";
  context.fillStyle = "#fff";
  context.lineWidth = STROKE_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
  setInk(false);
}

// The "draw a digit here" hint is a separate element: text on the canvas itself would be ink.
function setInk(hasInk) {
  state.hasInk = hasInk;
  $("#canvas-hint").hidden = hasInk;
}

// Pointer position in canvas pixels: the canvas is drawn at a CSS size that differs from 280 × 280.
function canvasPoint(event) {
  const box = drawing.canvas.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * (drawing.canvas.width / box.width),
    y: (event.clientY - box.top) * (drawing.canvas.height / box.height),
  };
}

function startStroke(event) {
  if (drawing.pointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  if (state.result && state.result.label !== null) resetForDrawing();  // drawing replaces a test digit
  drawing.pointer = event.pointerId;
  drawing.canvas.setPointerCapture(event.pointerId);  // keep the stroke when the pointer leaves the canvas
  drawing.last = canvasPoint(event);
  dot(drawing.last);
  scheduleClassify();
}

function continueStroke(event) {
  if (event.pointerId !== drawing.pointer) return;
  event.preventDefault();
  // Coalesced events keep fast strokes smooth where the browser merges moves between frames.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const point = canvasPoint(each);
    line(drawing.last, point);
    drawing.last = point;
  }
  scheduleClassify();
}

function endStroke(event) {
  if (event.pointerId !== drawing.pointer) return;
  drawing.pointer = null;
  drawing.last = null;
  classifyNow();
}

function dot(point) {
  const { context } = drawing;
  context.beginPath();
  context.arc(point.x, point.y, STROKE_WIDTH / 2, 0, 2 * Math.PI);
  context.fill();
  if (!state.hasInk) setInk(true);
}

function line(from, to) {
  const { context } = drawing;
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
  if (!state.hasInk) setInk(true);
}

function canvasPng() {
  return new Promise((resolve, reject) =>
    drawing.canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("canvas.toBlob failed"))), "image/png"));
}

// ---------------------------------------------------------------- classification scheduling
//
// At most one drawing request is in flight; strokes made meanwhile mark the drawing `dirty`,
// and it is sent again (throttled) once the answer is in, so the last stroke is always classified.

const schedule = { timer: null, inFlight: false, dirty: false, lastSent: 0 };

function updateBusy() {
  const busy = schedule.inFlight || schedule.dirty || schedule.timer !== null;
  document.body.dataset.busy = busy ? "1" : "0";
}

function scheduleClassify() {
  schedule.dirty = true;
  if (!schedule.inFlight && schedule.timer === null) {
    const wait = Math.max(0, schedule.lastSent + THROTTLE_MS - performance.now());
    schedule.timer = setTimeout(runClassify, wait);
  }
  updateBusy();
}

// On pointerup: no throttle wait, so the finished drawing is classified right away.
function classifyNow() {
  schedule.dirty = true;
  if (schedule.timer !== null) {
    clearTimeout(schedule.timer);
    schedule.timer = null;
  }
  if (!schedule.inFlight) runClassify();
  updateBusy();
}

async function runClassify() {
  schedule.timer = null;
  if (!schedule.dirty) return updateBusy();
  schedule.dirty = false;
  schedule.inFlight = true;
  schedule.lastSent = performance.now();
  updateBusy();
  try {
    await classifyDrawing();
  } finally {
    schedule.inFlight = false;
    if (schedule.dirty) scheduleClassify();
    updateBusy();
  }
}

// Clear and Random drop drawing work not yet sent: it would only report on a canvas that is gone.
function cancelPending() {
  if (schedule.timer !== null) clearTimeout(schedule.timer);
  schedule.timer = null;
  schedule.dirty = false;
  updateBusy();
}

function isBlankError(error) {
  return error instanceof ApiError && error.status === 400 && /blank|no ink/i.test(error.message);
}

async function classifyDrawing() {
  const generation = state.generation;
  if (!state.hasInk) return setStatus("Draw a digit.");
  try {
    const png = await canvasPng();
    const prepared = await api("/v1/preprocess", { method: "POST", headers: { "Content-Type": "image/png" }, body: png });
    const outputs = await infer(prepared.pixels, "FP32");
    if (generation !== state.generation) return;   // cleared or replaced while we waited
    render({ pixels: prepared.pixels, outputs, label: null });
    setStatus(`Classified by ${state.model.name} v${state.model.version}.`);
  } catch (error) {
    if (generation !== state.generation) return;
    if (isBlankError(error)) setStatus("Draw a digit (no ink found yet).");
    else setStatus(`Error: ${error.message}`, "error");
  }
}

// ---------------------------------------------------------------- buttons

function resetForDrawing() {
  state.generation++;
  cancelPending();
  state.result = null;
  $("#label").hidden = true;
  renderEmpty();
}

function onClear() {
  resetForDrawing();
  clearDrawing();
  setStatus("Draw a digit.");
}

async function onRandom() {
  const generation = ++state.generation;
  cancelPending();
  clearDrawing();
  setStatus("Loading a random MNIST test digit…", "busy");
  try {
    const sample = await api("/v1/samples/random");
    // Sent as UINT8 so the server scales it exactly as for any other client.
    const outputs = await infer(sample.pixels, "UINT8");
    if (generation !== state.generation) return;
    const pixels = sample.pixels.map((value) => value / 255);
    render({ pixels, outputs, label: sample.label });
    setStatus(`MNIST test image #${sample.index} (true label ${sample.label}).`);
  } catch (error) {
    if (generation === state.generation) setStatus(`Error: ${error.message}`, "error");
  }
}

// ---------------------------------------------------------------- network view (built once)

function buildNetworkView() {
  buildProbabilityBars();
  buildCells($("#layer-1"), "activation_1", 1);
  buildCells($("#layer-2"), "activation_2", 2);
  const weights = $("#weights");
  for (let index = 0; index < NEURONS; index++) {
    const canvas = document.createElement("canvas");
    canvas.width = SIDE;
    canvas.height = SIDE;
    canvas.className = "weight-image";
    canvas.dataset.index = String(index);
    canvas.dataset.layer = "activation_1";
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "button");
    canvas.setAttribute("aria-label", `Incoming weights of layer 1 neuron ${index}`);
    weights.append(canvas);
  }
  // One set of listeners for every neuron: hover, focus and tap all inspect it.
  for (const container of [$("#layer-1"), $("#layer-2"), weights]) {
    container.addEventListener("pointerover", onNeuronEvent);
    container.addEventListener("focusin", onNeuronEvent);
    container.addEventListener("click", onNeuronEvent);
  }
}

function buildProbabilityBars() {
  const list = $("#probabilities");
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.className = "prob-row";
    item.innerHTML = `<span class="prob-digit">${digit}</span>` +
      `<span class="prob-track"><span class="prob-bar" data-digit="${digit}" data-value="0"></span></span>` +
      `<span class="prob-value">–</span>`;
    list.append(item);
  }
}

function buildCells(container, layer, number) {
  for (let index = 0; index < NEURONS; index++) {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.className = "cell";
    cell.dataset.layer = layer;
    cell.dataset.index = String(index);
    cell.dataset.value = "0";
    cell.setAttribute("aria-label", `Layer ${number} neuron ${index}`);
    cell.textContent = String(index);
    container.append(cell);
  }
}

function onNeuronEvent(event) {
  const target = event.target.closest("[data-layer][data-index]");
  if (!target) return;
  state.selected = { layer: target.dataset.layer, index: Number(target.dataset.index) };
  showInspector();
}

// ---------------------------------------------------------------- painting

// Grey image of 784 values in 0..1 (ink white on black, like MNIST).
function paintGray(canvas, values) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const level = Math.round(Math.min(1, Math.max(0, values[i] || 0)) * 255);
    image.data.set([level, level, level, 255], i * 4);
  }
  context.putImageData(image, 0, 0);
}

// Weights in two colours, scaled by this neuron's largest |w| so every neuron uses the full range.
function paintWeights(canvas, weights, maxAbs) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  const scale = maxAbs > 0 ? 1 / maxAbs : 0;
  for (let i = 0; i < SIDE * SIDE; i++) {
    const strength = Math.min(1, Math.abs(weights[i]) * scale);
    const colour = weights[i] >= 0 ? POSITIVE : NEGATIVE;
    image.data.set([colour[0] * strength, colour[1] * strength, colour[2] * strength, 255], i * 4);
  }
  context.putImageData(image, 0, 0);
}

function paintAllWeights() {
  for (const canvas of document.querySelectorAll(".weight-image")) {
    const index = Number(canvas.dataset.index);
    paintWeights(canvas, neuronWeights(index), state.model.maxAbs[index]);
  }
}

// ---------------------------------------------------------------- rendering results

function render(result) {
  state.result = result;
  const input = $("#input-image");
  paintGray(input, result.pixels);
  input.dataset.pixels = JSON.stringify(result.pixels);

  const probabilities = result.outputs.probabilities;
  const best = probabilities.indexOf(Math.max(...probabilities));
  $("#digit").textContent = String(best);
  $("#confidence").textContent = `${(probabilities[best] * 100).toFixed(1)} % sure`;
  renderLabel(result.label, best);
  renderBars(probabilities, best);
  renderCells("activation_1", result.outputs.activation_1);
  renderCells("activation_2", result.outputs.activation_2);
  showInspector();

  state.updates++;
  document.body.dataset.updates = String(state.updates);
}

function renderLabel(label, best) {
  const element = $("#label");
  element.hidden = label === null;
  if (label === null) return;
  element.textContent = `true label ${label} ${label === best ? "✓" : "✗"}`;
  element.dataset.correct = String(label === best);
  element.dataset.label = String(label);
}

function renderBars(probabilities, best) {
  for (const bar of document.querySelectorAll(".prob-bar")) {
    const digit = Number(bar.dataset.digit);
    const value = probabilities[digit];
    bar.dataset.value = String(value);
    bar.style.setProperty("--value", String(value));
    bar.classList.toggle("best", digit === best);
    bar.closest(".prob-row").querySelector(".prob-value").textContent = `${(value * 100).toFixed(1)}%`;
  }
}

function renderCells(layer, values) {
  for (const cell of document.querySelectorAll(`.cell[data-layer="${layer}"]`)) {
    const value = values[Number(cell.dataset.index)];
    cell.dataset.value = String(value);
    cell.style.setProperty("--value", String(value));
    cell.classList.toggle("bright", value > 0.45);   // dark text on a brightly lit cell
    cell.title = `activation ${value.toFixed(3)}`;
  }
}

// Back to the empty state (after Clear): nothing classified.
function renderEmpty() {
  const input = $("#input-image");
  paintGray(input, []);
  input.dataset.pixels = "[]";
  $("#digit").textContent = "–";
  $("#confidence").textContent = "";
  for (const bar of document.querySelectorAll(".prob-bar")) {
    bar.dataset.value = "0";
    bar.style.setProperty("--value", "0");
    bar.classList.remove("best");
    bar.closest(".prob-row").querySelector(".prob-value").textContent = "–";
  }
  for (const cell of document.querySelectorAll(".cell")) {
    cell.dataset.value = "0";
    cell.style.setProperty("--value", "0");
    cell.classList.remove("bright");
    cell.removeAttribute("title");
  }
  showInspector();
}

function showInspector() {
  const selected = state.selected;
  const image = $("#inspector-image");
  const text = $("#inspector-text");
  for (const element of document.querySelectorAll(".selected")) element.classList.remove("selected");
  if (!selected) return;
  for (const element of document.querySelectorAll(`[data-layer="${selected.layer}"][data-index="${selected.index}"]`)) {
    element.classList.add("selected");
  }
  const values = state.result ? state.result.outputs[selected.layer] : null;
  const activation = values ? values[selected.index].toFixed(4) : "– (nothing classified yet)";
  if (selected.layer === "activation_1") {
    image.hidden = !state.model;
    let extra = "";
    if (state.model) {
      paintWeights(image, neuronWeights(selected.index), state.model.maxAbs[selected.index]);
      extra = ` · bias ${state.model.biases[selected.index].toFixed(3)} · max |w| ${state.model.maxAbs[selected.index].toFixed(3)}`;
    }
    text.textContent = `Layer 1 neuron ${selected.index}: activation ${activation}${extra}. ` +
      "Blue pixels raise its activation where there is ink, red pixels lower it.";
  } else {
    image.hidden = true;
    text.textContent = `Layer 2 neuron ${selected.index}: activation ${activation}. ` +
      "It combines the 16 layer 1 neurons (its weights are not published by the API).";
  }
}

// ---------------------------------------------------------------- start-up

async function start() {
  setupTokenDialog();
  buildNetworkView();
  setupDrawing();
  renderEmpty();
  $("#clear").addEventListener("click", onClear);
  $("#random").addEventListener("click", onRandom);
  try {
    await ensureModel();
    setStatus(`Model ${state.model.name} v${state.model.version} ready. Draw a digit.`);
  } catch (error) {
    setStatus(`Error loading the model: ${error.message}`, "error");
  }
}

document.addEventListener("DOMContentLoaded", start);

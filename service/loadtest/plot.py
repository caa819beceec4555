"""Latency percentiles against offered load, drawn with Pillow (no plotting library needed).

A log-scaled latency axis shows the knee where a server saturates: below it the percentiles sit
flat; past it queueing makes them climb by orders of magnitude.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SERIES = (("p50", (31, 119, 180)), ("p90", (44, 160, 44)), ("p99", (255, 127, 14)), ("p99.9", (214, 39, 40)))
WIDTH, HEIGHT = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 90, 150, 50, 70


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _nice_step(span: float, target_ticks: int = 6) -> float:
    raw = span / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def plot_latency_vs_load(runs: list[dict], path: Path, title: str) -> None:
    """Writes a PNG: x = offered load (req/s; achieved when no offer), y = latency ms (log)."""
    points = []
    for run in runs:
        x = run["offered_rps"] if run["offered_rps"] is not None else run["rps"]
        points.append((x, {name: run["latency_ms"][name] for name, _ in SERIES}, run["rps"]))
    values = [v for _, lat, _ in points for v in lat.values() if v is not None and v > 0]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((LEFT, 8), title, fill="black", font=font)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text(((x0 + x1) // 2 - 60, HEIGHT - 30), "offered load (req/s)", fill="black", font=font)
    draw.text((10, y0 - 18), "latency (ms, log scale)", fill="black", font=font)
    if not points or not values:
        draw.text((x0 + 20, (y0 + y1) // 2), "no successful requests to plot", fill="black", font=font)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        return
    xs = [x for x, _, _ in points]
    x_low, x_high = 0.0, max(xs) * 1.05 if max(xs) > 0 else 1.0
    y_low, y_high = min(values) / 1.5, max(values) * 1.5
    log_low, log_high = math.log10(y_low), math.log10(y_high)

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = x0 + (x - x_low) / (x_high - x_low) * (x1 - x0)
        py = y1 - (math.log10(y) - log_low) / (log_high - log_low) * (y1 - y0)
        return px, py

    for tick in _log_ticks(y_low, y_high):
        _, py = to_px(x_low, tick)
        draw.line((x0, py, x1, py), fill=(225, 225, 225))
        draw.text((x0 - 8 - 6 * len(f"{tick:g}"), py - 6), f"{tick:g}", fill="black", font=font)
    step = _nice_step(x_high - x_low)
    tick = 0.0
    while tick <= x_high:
        px, _ = to_px(tick, y_low)
        draw.line((px, y1, px, y1 + 5), fill="black")
        draw.text((px - 3 * len(f"{tick:,.0f}"), y1 + 8), f"{tick:,.0f}", fill="black", font=font)
        tick += step
    for row, (name, colour) in enumerate(SERIES):
        line = [to_px(x, lat[name]) for x, lat, _ in sorted(points, key=lambda p: p[0]) if lat[name]]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        legend_y = y0 + 10 + row * 18
        draw.line((x1 + 15, legend_y + 6, x1 + 40, legend_y + 6), fill=colour, width=3)
        draw.text((x1 + 48, legend_y), name, fill="black", font=font)
    for x, _, achieved in points:  # what the server actually delivered at each offered load
        px, _ = to_px(x, y_low)
        label = f"{achieved:,.0f}/s"
        draw.text((px - 3 * len(label), y1 - 16), label, fill=(110, 110, 110), font=font)
    draw.text((x1 + 15, y0 + 10 + len(SERIES) * 18 + 6), "grey: achieved", fill=(110, 110, 110), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")

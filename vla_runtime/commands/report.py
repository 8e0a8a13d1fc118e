"""Run reports: a JSON summary and a PNG plot (drawn with OpenCV, no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

Series = tuple[np.ndarray, np.ndarray]  # (x, y)

_COLOURS = [(200, 80, 30), (40, 150, 40), (30, 60, 210), (150, 40, 150), (20, 150, 170)]


def _panel(title: str, series: dict[str, Series], xlabel: str, ylabel: str, size=(420, 560),
           equal_axes: bool = False, hline: float | None = None) -> np.ndarray:
    import cv2

    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 15, 30, 40
    pts = [s for s in series.values() if len(s[0])]
    cv2.putText(img, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not pts:
        cv2.putText(img, "no data", (w // 2 - 30, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        return img
    xs = np.concatenate([p[0] for p in pts])
    ys = np.concatenate([p[1] for p in pts] + ([np.array([hline])] if hline is not None else []))
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
    if x1 - x0 < 1e-9:
        x1 = x0 + 1.0
    if y1 - y0 < 1e-9:
        y1 = y0 + 1.0
    if equal_axes:
        span = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0, x1, y0, y1 = cx - span / 2, cx + span / 2, cy - span / 2, cy + span / 2
    pw, ph = w - left - right, h - top - bottom

    def px(x, y):
        return (int(left + (x - x0) / (x1 - x0) * pw), int(top + ph - (y - y0) / (y1 - y0) * ph))

    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        cv2.putText(img, f"{yv:.3g}", (2, px(x0, yv)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        xv = x0 + frac * (x1 - x0)
        cv2.putText(img, f"{xv:.3g}", (px(xv, y0)[0] - 12, top + ph + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1)
    cv2.putText(img, xlabel, (left + pw // 2 - 20, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, ylabel, (2, top - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    if hline is not None:
        cv2.line(img, px(x0, hline), px(x1, hline), (0, 0, 220), 1, cv2.LINE_AA)
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        ok = np.isfinite(x) & np.isfinite(y)
        poly = np.array([px(a, b) for a, b in zip(x[ok], y[ok])], np.int32)
        if len(poly) > 1:
            cv2.polylines(img, [poly], False, colour, 2, cv2.LINE_AA)
        elif len(poly) == 1:
            cv2.circle(img, tuple(poly[0]), 3, colour, -1)
        cv2.putText(img, name, (left + 8, top + 16 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return img


def write_plot(path: Path, panels: list[dict]) -> Path:
    """Write a PNG with one panel per dict (keys as :func:`_panel`'s arguments), two per row."""
    import cv2

    imgs = [_panel(**p) for p in panels]
    if len(imgs) % 2:
        imgs.append(np.full_like(imgs[0], 255))
    rows = [np.hstack(imgs[i : i + 2]) for i in range(0, len(imgs), 2)]
    cv2.imwrite(str(path), np.vstack(rows)[:, :, ::-1])
    return path


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path

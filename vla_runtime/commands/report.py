"""Run reports: a JSON summary and a PNG that answers one question per panel (matplotlib, headless).

Every PNG the project writes is drawn here. A :class:`Panel` is one question with its answer:
lines with a legend entry each, horizontal thresholds (success radius, ``latent.max_age_s``,
the loop's target rate, the detector's δ(t)) that are legend entries too, and vertical markers
for the bridge's HOLD/HALTED reports. The ``*_panel`` builders below are the questions a run
report asks; :func:`write_plot` lays panels out on a grid and writes the PNG.

Drawing uses :class:`matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global
backend switch, no display needed.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The files a run report consists of, in its run directory (``make demo`` writes both; the README names them).
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"

#: The smallest extent of a top view [cm].
TOP_VIEW_MIN_SPAN_CM = 10.0

#: Colours of thresholds and of the bridge's mode markers (lines take matplotlib's tab10 cycle).
_THRESHOLD_COLOUR = "#d62728"
_EVENT_COLOURS = {"HOLD": "#ff7f0e", "HALTED": "#7f0000", "TELEOP": "#9467bd"}


@dataclass
class Line:
    """One data series: ``x``/``y`` arrays, its legend label, and how to draw it."""

    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    label: str
    style: str = "line"  # line | points
    colour: str | None = None
    start_marker: bool = False  # a filled dot at the first point (paths: where it started)
    end_marker: str | None = None  # a marker at the last point ("x": target, "*": reached)


@dataclass
class Threshold:
    """A reference the data is judged against: a horizontal line (``y``) or a curve (``x``, ``y``)."""

    y: float | Sequence[float] | np.ndarray
    label: str
    x: Sequence[float] | np.ndarray | None = None


@dataclass
class Event:
    """A moment something happened (the bridge went to HOLD, a halt): a vertical line."""

    x: float
    kind: str  # HOLD | HALTED | TELEOP | anything (legend groups by kind)


@dataclass
class Panel:
    """One question and the data that answers it."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    equal_axes: bool = False
    ylim: tuple[float | None, float | None] | None = None
    xlim: tuple[float | None, float | None] | None = None
    note: str | None = None  # shown in the panel (e.g. "no data: the detector is not in this graph")


# ------------------------------------------------------------------------------------- drawing
def _finite(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float).reshape(-1), np.asarray(y, float).reshape(-1)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _wrap(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def _draw(ax, panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    has_data = False
    for line in panel.lines:
        x, y = _finite(line.x, line.y)
        kw = {"label": line.label}
        if line.colour:
            kw["color"] = line.colour
        if line.style == "points":
            art = ax.plot(x, y, ".", markersize=4, zorder=3, **kw)
        else:
            art = ax.plot(x, y, linewidth=1.5, zorder=3, **kw)
        colour = art[0].get_color()
        if len(x):
            has_data = True
            if line.start_marker:
                ax.plot(x[:1], y[:1], "o", color=colour, markersize=6)
            if line.end_marker:
                ax.plot(x[-1:], y[-1:], line.end_marker, color=colour, markersize=10, markeredgewidth=2)
    for th in panel.thresholds:
        if th.x is None:
            ax.axhline(float(th.y), color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=th.label, zorder=2)
        else:
            x, y = _finite(th.x, th.y)
            ax.step(x, y, where="post", color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=th.label,
                    zorder=2)
    seen: set[str] = set()
    for ev in sorted(panel.events, key=lambda e: e.x):
        if not math.isfinite(ev.x):
            continue
        ax.axvline(ev.x, color=_EVENT_COLOURS.get(ev.kind, "#7f7f7f"), linestyle=":", linewidth=1.5,
                   label=f"bridge → {ev.kind}" if ev.kind not in seen else None)
        seen.add(ev.kind)
    ax.set_title(panel.title, fontsize=11, loc="left")
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        fmt = ScalarFormatter(useOffset=False)  # never "+3.0e1" offsets or 4-digit noise
        fmt.set_scientific(False)
        axis.set_major_formatter(fmt)
    if panel.equal_axes:  # square limits given: keep them and shape the box; else widen the data limits
        ax.set_aspect("equal", adjustable="box" if panel.xlim and panel.ylim else "datalim")
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    if panel.xlim is not None:
        ax.set_xlim(*panel.xlim)
    if not has_data:
        ax.text(0.5, 0.5, _wrap(panel.note or "no data"), transform=ax.transAxes, ha="center", va="center",
                fontsize=10, color="#555555")
    elif panel.note:
        ax.text(0.99, 0.02, _wrap(panel.note), transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                color="#555555")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)


def write_plot(path: str | Path, panels: Sequence[Panel], title: str | None = None, ncols: int = 2) -> Path:
    """Write ``panels`` as one PNG, ``ncols`` per row, with a figure ``title``; returns the path."""
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("write_plot needs at least one panel")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    path = Path(path)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.2 * nrows + (0.5 if title else 0)), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(panels):
            _draw(ax, panels[i])
        else:
            ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.savefig(path, format="png")
    return path


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as strict JSON (NaN and inf become null) that any parser reads."""
    path = Path(path)
    from vla_runtime.core.failure_detection import _plain

    path.write_text(json.dumps(_plain(data), indent=2, allow_nan=False, default=float))
    return path


# ------------------------------------------------------------------------------ the questions
def _data_max(values: Sequence[np.ndarray]) -> float:
    vals = [np.asarray(v, float) for v in values if len(v)]
    return max([0.0] + [float(np.nanmax(v)) for v in vals if np.isfinite(v).any()])


def _upper(values: Sequence[np.ndarray], floor: float) -> float:
    """A y-axis top that shows the data and the reference: at least ``floor``, 10 % headroom."""
    top = max(floor, _data_max(values))
    return top * 1.1 if top > 0 else 1.0


def _limit_axis(values: Sequence[np.ndarray], limit: float, label: str) -> tuple[float, str]:
    """(y-axis top, legend label) for data judged against an upper ``limit``.

    When the data stay far below the limit (under a quarter of it), the axis fits the data and the
    legend says the limit lies above the panel, so the data are not squashed flat at the bottom.
    """
    peak = _data_max(values)
    if peak > 0 and limit > 4 * peak:
        return peak * 1.3, f"{label}: above this panel"
    return _upper(values, limit), label


def reach_panel(episodes: Sequence[dict], radius_m: float) -> Panel:
    """Did it reach the target? Distance TCP → target [cm] over time, success radius, success moments.

    ``episodes``: ``{"label", "t", "distance_m", "success_t"}`` each (``success_t`` None: missed).
    """
    lines, ds = [], []
    for ep in episodes:
        d_cm = np.asarray(ep["distance_m"], float) * 100.0
        ds.append(d_cm)
        lines.append(Line(ep["t"], d_cm, ep["label"], end_marker="*" if ep.get("success_t") is not None else "x"))
    return Panel("Did it reach the target?", "time since resume [s]", "distance TCP → target [cm]", lines,
                 [Threshold(radius_m * 100.0, f"success radius {radius_m * 100:g} cm")],
                 ylim=(0.0, _upper(ds, radius_m * 100.0)),
                 note="★ reached   ✕ time ran out")


def top_view_panel(paths: Sequence[dict], point: str = "TCP") -> Panel:
    """Where did the hand go? Paths of the hand's ``point`` and of the targets, seen from above [cm].

    ``paths``: ``{"label", "xy": (N, 2) metres, "target_xy": (M, 2) metres or None}`` each.
    """
    lines = []
    has_target = False
    for i, p in enumerate(paths):
        colour = f"C{i}"
        xy = np.asarray(p["xy"], float).reshape(-1, 2) * 100.0
        lines.append(Line(xy[:, 0], xy[:, 1], f"{p['label']}: {point}", colour=colour, start_marker=True))
        if p.get("target_xy") is not None:
            has_target = True
            tg = np.asarray(p["target_xy"], float).reshape(-1, 2) * 100.0
            lines.append(Line(tg[:, 0], tg[:, 1], f"{p['label']}: target", colour=colour, style="points",
                              end_marker="x"))
    # At least TOP_VIEW_MIN_SPAN_CM across, so a hand that barely moved reads as barely moving
    # (and the ticks stay whole centimetres).
    pts = [np.column_stack(_finite(line.x, line.y)) for line in lines]
    pts = np.concatenate(pts) if pts else np.zeros((0, 2))
    xlim = ylim = None
    if len(pts):
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        mid, half = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2 * 1.1, TOP_VIEW_MIN_SPAN_CM / 2)
        xlim, ylim = (mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)
    return Panel("Where did the hand go? (top view)", "x [cm]", "y [cm]", lines, equal_axes=True,
                 note="● start   ✕ target (last position)" if has_target else "● start", xlim=xlim, ylim=ylim)


def latent_age_panel(series: Sequence[dict], max_age_s: float, events: Sequence[Event] = ()) -> Panel:
    """How late was the latent? Its age at the fast path [ms] over time, against ``latent.max_age_s``.

    ``series``: ``{"label", "t", "age_s"}`` each.
    """
    lines, ages = [], []
    for s in series:
        a = np.asarray(s["age_s"], float) * 1e3
        ages.append(a)
        lines.append(Line(s["t"], a, s["label"]))
    top, label = _limit_axis(ages, max_age_s * 1e3, f"max_age {max_age_s * 1e3:g} ms (older: HOLD)")
    return Panel("How late was the latent?", "time [s]", "latent age at the fast path [ms]", lines,
                 [Threshold(max_age_s * 1e3, label)], list(events), ylim=(0.0, top))


def loop_rate_panel(series: Sequence[dict], target_hz: float) -> Panel:
    """Did the loop keep its rate? The fast loop's achieved rate [Hz] (its diagnostics) over time.

    ``series``: ``{"label", "t", "hz"}`` each. The axis starts at 0, so a steady 30 Hz reads as a
    flat line at 30 against the target, not as noise blown up to fill the panel.
    """
    lines, hz = [], []
    for s in series:
        h = np.asarray(s["hz"], float)
        hz.append(h)
        lines.append(Line(s["t"], h, s["label"], style="points" if len(h) < 3 else "line"))
    return Panel("Did the fast loop keep its rate?", "time [s]", "achieved rate [Hz]", lines,
                 [Threshold(target_hz, f"target {target_hz:g} Hz")], ylim=(0.0, _upper(hz, target_hz)))


def period_panel(t: Sequence[float], period_ms: Sequence[float], nominal_ms: float, title: str) -> Panel:
    """Did the loop keep its rate? Time between consecutive plans at a subscriber [ms] (jitter)."""
    p = np.asarray(period_ms, float)
    return Panel(title, "time [s]", "period between plans [ms]",
                 [Line(t, p, "period at a subscriber", style="points")],
                 [Threshold(nominal_ms, f"nominal {nominal_ms:.1f} ms")],
                 ylim=(0.0, _upper([p], 2.0 * nominal_ms)))


def jitter_panel(series: Sequence[dict], tick_ms: float) -> Panel:
    """How steady was the loop's period? p99 of its deviation from the tick [ms] (its diagnostics).

    ``series``: ``{"label", "t", "p99_ms"}`` each; the reference is 10 % of one tick.
    """
    lines, ms = [], []
    for s in series:
        m = np.asarray(s["p99_ms"], float)
        ms.append(m)
        lines.append(Line(s["t"], m, s["label"], style="points" if len(m) < 3 else "line"))
    top, label = _limit_axis(ms, 0.1 * tick_ms, f"10 % of a tick ({0.1 * tick_ms:.1f} ms)")
    return Panel("How steady was the loop period?", "time [s]", "period jitter p99 [ms]", lines,
                 [Threshold(0.1 * tick_ms, label)], ylim=(0.0, top))


def infer_panel(series: Sequence[dict], budget_ms: float) -> Panel:
    """How long did the fast path's inference take? [ms] over time, against one tick's budget.

    ``series``: ``{"label", "t", "infer_ms"}`` each.
    """
    lines, ms = [], []
    for s in series:
        m = np.asarray(s["infer_ms"], float)
        ms.append(m)
        lines.append(Line(s["t"], m, s["label"], style="points"))
    top, label = _limit_axis(ms, budget_ms, f"one tick {budget_ms:.1f} ms")
    return Panel("How long did fast inference take?", "time [s]", "inference time [ms]", lines,
                 [Threshold(budget_ms, label)], ylim=(0.0, top))


def detector_panel(t: Sequence[float], score: Sequence[float], threshold: Sequence[float],
                   events: Sequence[Event] = (), note: str | None = None,
                   xlim: tuple[float, float] | None = None) -> Panel:
    """Where did the detector fire? Its failure score against δ(t), with the bridge's HOLD/HALTED.

    ``note`` says what the panel cannot show (no learned score: which hard monitor halted).
    """
    return Panel("Where did the failure detector fire?", "time [s]", "failure score (unitless)",
                 [Line(t, score, "failure score")], [Threshold(threshold, "threshold δ(t)", x=t)], list(events),
                 note=note, xlim=xlim)


def mode_events(modes: Sequence[tuple[float, str]], t0: float = 0.0) -> list[Event]:
    """HOLD / HALTED / TELEOP markers from ``(time, mode)`` safety-state reports: one per transition."""
    out, last = [], None
    for t, mode in modes:
        if mode != last and mode in _EVENT_COLOURS:
            out.append(Event(t - t0, mode))
        last = mode
    return out

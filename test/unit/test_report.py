"""Run reports: matplotlib panels that answer one question each, readable without reading code."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from test.conftest import ROOT
from vla_runtime.commands.report import (
    Event,
    _draw,
    detector_panel,
    latent_age_panel,
    loop_rate_panel,
    mode_events,
    reach_panel,
    write_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _drawn(panel):
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw(ax, panel)
    fig.canvas.draw()
    return ax


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_steady_30_hz_loop_reads_as_30_against_its_target_not_as_noise():
    t = np.arange(0.5, 10, 0.5)
    hz = 30.0 + 1e-4 * np.sin(t)  # what made the old OpenCV axis read "30, 30, 30"
    ax = _drawn(loop_rate_panel([{"label": "touch", "t": t, "hz": hz}], 30.0))
    ticks = [tk.get_text() for tk in ax.get_yticklabels() if tk.get_text()]
    assert len(ticks) == len(set(ticks)) >= 3, ticks  # distinct tick labels
    assert all(re.fullmatch(r"-?\d+(\.\d)?", x.replace("\u2212", "-")) for x in ticks), ticks  # no digit noise
    lo, hi = ax.get_ylim()
    assert lo == 0.0 and hi > 30.0
    assert ax.get_ylabel() == "achieved rate [Hz]" and "[s]" in ax.get_xlabel()


def test_every_line_and_threshold_has_a_legend_entry():
    t = np.linspace(0, 3, 50)
    ax = _drawn(reach_panel([{"label": "touch (red): reached in 2.0 s", "t": t, "distance_m": 0.3 * (1 - t / 3),
                              "success_t": 2.0},
                             {"label": "touch_dynamic (blue): missed", "t": t, "distance_m": 0.2 + 0 * t,
                              "success_t": None}], 0.03))
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["touch (red): reached in 2.0 s", "touch_dynamic (blue): missed", "success radius 3 cm"]
    assert ax.get_ylabel() == "distance TCP → target [cm]"


def test_detector_panel_shows_score_threshold_and_each_kind_of_bridge_event_once():
    t = np.linspace(0, 5, 20)
    events = mode_events([(10.0, "POLICY"), (12.0, "HOLD"), (12.5, "HOLD"), (13.0, "POLICY"), (13.5, "HOLD"),
                          (14.0, "HALTED")], t0=10.0)
    assert [(e.x, e.kind) for e in events] == [(2.0, "HOLD"), (3.5, "HOLD"), (4.0, "HALTED")]
    ax = _drawn(detector_panel(t, np.linspace(0, 1, 20), np.full(20, 0.6), events))
    assert ax.get_legend_handles_labels()[1] == ["failure score", "threshold δ(t)", "bridge → HOLD",
                                                 "bridge → HALTED"]


def test_a_limit_far_above_the_data_does_not_squash_it():
    t = np.linspace(0, 5, 100)
    ax = _drawn(latent_age_panel([{"label": "touch", "t": t, "age_s": 0.05 + 0.1 * (t % 0.2)}], max_age_s=2.0))
    assert ax.get_ylim()[1] < 200.0  # ms: the data fill the panel
    assert "above this panel" in ax.get_legend_handles_labels()[1][-1]
    ax = _drawn(latent_age_panel([{"label": "touch", "t": t, "age_s": 0.1 + 0.3 * t / 5}], max_age_s=0.3))
    assert ax.get_ylim()[1] > 300.0  # close to the limit: the limit is in view
    assert ax.get_legend_handles_labels()[1][-1] == "max_age 300 ms (older: HOLD)"


def test_write_plot_writes_a_png_with_a_grid_of_panels_and_says_no_data_when_empty(tmp_path):
    t = np.linspace(0, 2, 30)
    panels = [loop_rate_panel([{"label": "a", "t": t, "hz": 30 + 0 * t}], 30.0),
              latent_age_panel([{"label": "a", "t": [], "age_s": []}], 0.5, [Event(1.0, "HOLD")]),
              reach_panel([{"label": "a", "t": t, "distance_m": 0.1 + 0 * t, "success_t": None}], 0.03)]
    path = write_plot(tmp_path / "r.png", panels, title="t", ncols=2)
    w, h = _png_size(path)
    assert w >= 1000 and h >= 700, (w, h)
    with pytest.raises(ValueError, match="at least one panel"):
        write_plot(tmp_path / "x.png", [])


def test_no_hand_written_plotting_remains():
    drawing = re.compile(r"cv2\.(line|putText|polylines|rectangle|circle|arrowedLine)\(")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "vla_runtime").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if drawing.search(line)]
    assert offenders == [], f"plots are drawn with matplotlib (commands/report.py), not OpenCV: {offenders}"


def _episode(task: str, colour: str, reached_at: float | None, duration: float) -> dict:
    t = np.linspace(-0.2, duration, 200)
    target = np.array([0.5, 0.1, 0.05])
    start = np.array([0.3, -0.1, 0.3])
    end = target if reached_at is not None else target + np.array([0.0, 0.06, 0.0])
    ee = start + (end - start) * np.clip(t / duration, 0, 1)[:, None]
    lt = np.arange(0, duration, 1 / 30)
    loop = [{"t": x, "achieved_hz": 30.0, "period_jitter_ms_p99": 0.4} for x in np.arange(0.5, duration, 0.5)]
    return {"task": task, "colour": colour, "instruction": f"touch the {colour} cube",
            "success": reached_at is not None,
            "time_to_success_s": reached_at, "min_distance_m": float(np.linalg.norm(ee - target, axis=1).min()),
            "trace": {"ee": {"t": t.tolist(), "xyz": ee.tolist()},
                      "target": {"t": t.tolist(), "xyz": np.tile(target, (len(t), 1)).tolist()},
                      "latent_age_s": {"t": lt.tolist(), "age": (0.05 + 0 * lt).tolist(),
                                       "infer_ms": (1.2 + 0 * lt).tolist()},
                      "loop_timing": loop}}


def test_demo_episode_report_and_table(tmp_path):
    from vla_runtime.commands.demo import episode_table
    from vla_runtime.commands.evaluation import write_episodes_plot
    from vla_runtime.core.config import load_config

    rows = [_episode("touch", "red", 2.0, 2.0), _episode("touch_dynamic", "blue", None, 6.0)]
    rows[1]["min_distance_m"] = 0.0473
    path = write_episodes_plot(tmp_path / "report.png", rows, load_config(ROOT / "config" / "sim_panda_reach.yaml"))
    assert _png_size(path)[0] >= 1500  # six panels, three per row
    lines = episode_table(rows).splitlines()
    assert lines[0].split() == ["task", "colour", "success", "time", "[s]", "min", "distance", "[cm]"]
    assert lines[1].split() == ["touch", "red", "yes", "2.00", "0.0"]
    assert lines[2].split() == ["touch_dynamic", "blue", "no", "-", "4.7"]


def test_report_json_is_strict_json(tmp_path):
    import json

    from vla_runtime.commands.report import write_json

    path = write_json(tmp_path / "r.json", {"score": float("nan"), "hz": np.float32(30.0), "xs": np.arange(3),
                                            "nested": [{"inf": float("inf"), "np_nan": np.float32("nan")}],
                                            "arr": np.array([1.5, np.nan])})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "score": None, "hz": 30.0, "xs": [0, 1, 2], "nested": [{"inf": None, "np_nan": None}], "arr": [1.5, None]}


def test_detector_panel_says_what_it_cannot_show():
    from vla_runtime.commands.demo import _detector_note

    hard_only = [(0.1, {"score": "nan", "learned": "off: no learned head", "causes": "none"}),
                 (0.6, {"score": "nan", "learned": "off: no learned head",
                        "causes": "interventions: safety filter intervening 1510.0/s (limit 20/s)"})]
    note = _detector_note(hard_only)
    assert "no learned score: hard monitors only" in note and "fired on: interventions" in note
    assert _detector_note([(0.1, {"score": "0.2", "causes": "none"})]) is None

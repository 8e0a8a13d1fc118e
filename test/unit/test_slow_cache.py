"""Slow-path caching (core/slow_cache): what counts as an unchanged scene, and its config (no ROS).

The scene tests use frames rendered from the simulated Panda's scene camera at the size the sim
configs give the slow path (96×96), with sensor noise and lighting flicker added.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from vla_runtime.core.config import PROJECT_ROOT, ConfigError, config_from_dict, load_config
from vla_runtime.core.slow_cache import SlowCache, change_score, reduce_frame

CFG = PROJECT_ROOT / "config" / "sim_panda.yaml"
SIZE = 96
S = 1_000_000_000  # ns per s
INSTR = "touch the red cube"


@pytest.fixture(scope="module")
def scene():
    """(static frame, frame with the red cube moved 2 cm, frame with the arm moved 0.02 rad)."""
    from vla_runtime.sim.robot import SimRobot

    robot = SimRobot(load_config(CFG))
    robot.reset(3)
    still = robot.render("scene", SIZE, SIZE)
    pos, quat = robot.object_poses()["red_cube"]
    robot.move_object("red_cube", np.asarray(pos, float) + [0.0, 0.02, 0.0], quat)
    moved = robot.render("scene", SIZE, SIZE)
    robot.reset(3)
    return still, moved


def noisy(img: np.ndarray, rng: np.random.Generator, sigma: float = 3.0, gain: float = 1.0) -> np.ndarray:
    """The frame as a camera would give it again: Gaussian sensor noise and a global gain (flicker)."""
    out = img.astype(np.float32) * gain + rng.normal(0.0, sigma, img.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def computed_once(cache: SlowCache, frame: np.ndarray, state=None, obs_ns: int = 1 * S) -> None:
    d = cache.check({"scene": frame}, INSTR, state, obs_ns)
    assert not d.reuse and d.reason == "first"
    cache.computed("latent-0", INSTR, state, obs_ns, compute_ms=40.0)


def test_static_scene_with_sensor_noise_and_flicker_is_reused(scene):
    still, _ = scene
    rng = np.random.default_rng(0)
    cache = SlowCache()
    computed_once(cache, noisy(still, rng))
    for k in range(1, 9):  # 8 more steps at 5 Hz: σ = 3 noise, ±8 % lighting flicker
        d = cache.check({"scene": noisy(still, rng, gain=1.0 + 0.08 * (-1) ** k)}, INSTR, None, S + k * S // 5)
        assert d.reuse, f"step {k}: score {d.score:.2f} on an unchanged scene"
        assert d.score < 0.6 * cache.image_threshold  # margin: noise and flicker stay well below the default
        cache.reused()
    assert (cache.steps_computed, cache.steps_reused) == (1, 8)
    assert cache.compute_saved_ms == pytest.approx(8 * 40.0)
    assert cache.latent == "latent-0"


def test_moved_cube_recomputes(scene):
    still, moved = scene
    rng = np.random.default_rng(1)
    cache = SlowCache()
    computed_once(cache, noisy(still, rng))
    d = cache.check({"scene": noisy(moved, rng)}, INSTR, None, S + S // 5)
    assert not d.reuse and d.reason == "scene"
    assert d.score > 4 * cache.image_threshold  # a 2 cm move of a cube is far above the threshold (5 mm: ~20)


def test_slow_drift_is_caught_against_the_computed_frames(scene):
    """Each step compares with the frames of the last COMPUTED step: small moves add up."""
    still, moved = scene
    cache = SlowCache()
    computed_once(cache, still)
    for k, alpha in enumerate((0.25, 0.5, 0.75, 1.0), start=1):  # a cross-fade towards the moved cube
        frame = np.round((1 - alpha) * still + alpha * moved.astype(np.float32)).astype(np.uint8)
        d = cache.check({"scene": frame}, INSTR, None, S + k * S // 5)
        if not d.reuse:
            break
        cache.reused()
    assert not d.reuse and d.reason == "scene"


def test_instruction_change_recomputes(scene):
    still, _ = scene
    cache = SlowCache()
    computed_once(cache, still)
    d = cache.check({"scene": still}, "touch the blue cube", None, S + S // 5)
    assert not d.reuse and d.reason == "instruction"
    assert d.score == 0.0  # the frames alone would have been reused


def test_max_reuse_age_recomputes(scene):
    still, _ = scene
    cache = SlowCache(max_reuse_s=1.0)
    computed_once(cache, still, obs_ns=10 * S)
    assert cache.check({"scene": still}, INSTR, None, 11 * S).reuse  # exactly max_reuse_s: still reused
    cache.reused()
    d = cache.check({"scene": still}, INSTR, None, 11 * S + 1)
    assert not d.reuse and d.reason == "max_reuse"
    cache.computed("latent-1", INSTR, None, 11 * S + 1, compute_ms=40.0)
    assert cache.check({"scene": still}, INSTR, None, 12 * S).reuse  # the age counts from the new computation
    assert cache.recompute_reasons["max_reuse"] == 1


def test_a_scene_change_as_the_latent_ages_counts_as_a_scene_recompute(scene):
    """max_reuse counts the steps computed only because the latent got old: a cube moved in the same
    step reads as what it is (a graph test waiting for a scene recompute once missed it this way)."""
    still, moved = scene
    cache = SlowCache(max_reuse_s=1.0)
    computed_once(cache, still, obs_ns=10 * S)
    d = cache.check({"scene": moved}, INSTR, None, 12 * S)
    assert not d.reuse and d.reason == "scene" and d.score > cache.image_threshold
    assert cache.recompute_reasons == {**dict.fromkeys(cache.recompute_reasons, 0), "first": 1, "scene": 1}


def test_state_change_beyond_tolerance_recomputes(scene):
    still, _ = scene
    q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785])
    cache = SlowCache(state_tolerance_rad=0.01)
    computed_once(cache, still, state=q)
    assert cache.check({"scene": still}, INSTR, q + 0.005, S + S // 5).reuse  # encoder noise
    cache.reused()
    bent = q.copy()
    bent[3] += 0.02
    d = cache.check({"scene": still}, INSTR, bent, S + 2 * S // 5)
    assert not d.reuse and d.reason == "state"
    assert cache.check({"scene": still}, INSTR, None, S + 2 * S // 5).reason == "state"  # state gone


def test_another_camera_set_or_size_recomputes(scene):
    still, _ = scene
    cache = SlowCache()
    computed_once(cache, still)
    assert cache.check({"scene": still, "wrist": still}, INSTR, None, S + S // 5).reason == "cameras"
    half = still[::2, ::2]
    d = cache.check({"scene": half}, INSTR, None, S + S // 5)
    assert not d.reuse and d.reason == "scene" and math.isinf(d.score)


def test_reduce_frame_and_score_units():
    img = np.full((96, 128, 3), 100, np.uint8)
    r = reduce_frame(img)
    assert r.shape == (24, 32)  # 4 px cells: about 32 on the long side
    brighter = img.copy()
    brighter[:4, :4] = 200  # one cell of 768, fully: +100 units there, the mean moves by 0.13 %
    assert change_score(r, reduce_frame(brighter)) == pytest.approx(100.0, rel=0.01)
    assert change_score(r, reduce_frame((img * 1.1).astype(np.uint8))) == pytest.approx(0.0, abs=1e-3)  # flicker
    with pytest.raises(ValueError, match=r"H×W×3 or H×W, got shape \(4, 4, 4\)"):
        reduce_frame(np.zeros((4, 4, 4)))


def test_computed_needs_a_check_first():
    with pytest.raises(RuntimeError, match="without a check"):
        SlowCache().computed("x", INSTR, None, 1, 1.0)
    with pytest.raises(ValueError, match="max_reuse_s .* got 0.0"):
        SlowCache(max_reuse_s=0.0)


# ----------------------------------------------------------------------------- config
def _with_cache(**fields) -> dict:
    data = yaml.safe_load(CFG.read_text())
    data["slow_cache"] = fields
    return data


def test_cache_is_off_unless_asked():
    cfg = load_config(CFG)
    assert cfg.slow_cache.enabled is False
    on = config_from_dict(_with_cache(enabled=True, image_threshold=6.0, max_reuse_s=1.5))
    assert (on.slow_cache.image_threshold, on.slow_cache.max_reuse_s) == (6.0, 1.5)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"image_threshold": 0.0}, "slow_cache: image_threshold must be in (0, 255], got 0.0"),
        ({"image_threshold": 300}, "slow_cache: image_threshold must be in (0, 255], got 300.0"),
        ({"state_tolerance_rad": -0.1}, "slow_cache: state_tolerance_rad must be in [0, 3.14159], got -0.1"),
        ({"max_reuse_s": float("nan")}, "slow_cache: max_reuse_s must be in (0, 3600], got nan"),
        ({"enabled": True, "max_reuse_s": 0.1},
         "slow_cache.max_reuse_s = 0.1 is shorter than one slow period (0.2 s at rates.slow_hz 5.0)"),
        ({"threshold": 5}, "slow_cache.threshold: unknown field (misspelled?)"),
    ],
)
def test_bad_cache_values_are_named(fields, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict(_with_cache(**fields))
    assert any(expected in p for p in e.value.problems), e.value.problems

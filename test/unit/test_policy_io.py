"""Feeds are built by the roles model.yaml gives the tensors, never by hard-coded names."""

from pathlib import Path

import numpy as np
import pytest

from vla_runtime.core.policy_io import FastFeeds, SlowFeeds, resize_nearest
from vla_runtime.engines.model_package import load_model_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pkg():
    p = load_model_package(ROOT / "models/timing_reference")
    yield p
    p.close()


def test_slow_feeds_from_a_camera_frame_and_instruction(pkg):
    feeds = SlowFeeds(pkg.spec.slow, ["scene"])
    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    tok = pkg.tokenizer.encode("touch the red cube")
    f = feeds.build({"scene": img}, tok.ids, tok.mask)
    image_spec = pkg.spec.slow.input_by_role("image")
    assert f[image_spec.name].shape == tuple(image_spec.shape)
    assert f[image_spec.name].dtype == np.dtype(image_spec.dtype)
    out = pkg.slow_engine.infer(f)
    assert out["latent"].shape == (1, pkg.spec.latent.tokens, pkg.spec.latent.dim)


def test_slow_feeds_refuse_a_missing_camera(pkg):
    with pytest.raises(ValueError, match="wants camera 'scene'"):
        SlowFeeds(pkg.spec.slow, ["wrist"])
    feeds = SlowFeeds(pkg.spec.slow, ["scene"])
    tok = pkg.tokenizer.encode("x")
    with pytest.raises(KeyError, match="no image from camera 'scene'"):
        feeds.build({}, tok.ids, tok.mask)
    with pytest.raises(ValueError, match="must be H×W×3"):
        feeds.image_tensor(pkg.spec.slow.input_by_role("image"), np.zeros((8, 8), np.uint8))


def test_fast_feeds_are_preallocated_and_take_the_prefix(pkg):
    feeds = FastFeeds(pkg.spec)
    assert feeds.supports_prefix
    latent_before = feeds.latent
    feeds.latent_view[...] = 1.0
    assert feeds.latent is latent_before and np.all(feeds.latent == 1.0)
    h, a = pkg.spec.chunk_horizon, pkg.spec.action_dim
    feeds.set_prefix(np.ones((1, h, a), np.float32), np.ones(h, np.float32))
    assert np.all(feeds.prefix == 1.0) and np.all(feeds.prefix_mask == 1.0)
    feeds.set_prefix(None, None)
    assert not feeds.prefix.any() and not feeds.prefix_mask.any()
    out = pkg.fast_engine.infer(feeds.feeds)
    assert out[feeds.actions_spec.name].shape == (1, h, a)


def test_resize_nearest_keeps_corners():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    big = resize_nearest(img, 8, 12)
    assert big.shape == (8, 12, 3)
    assert np.array_equal(big[0, 0], img[0, 0]) and np.array_equal(big[-1, -1], img[-1, -1])
    assert resize_nearest(img, 4, 6) is img

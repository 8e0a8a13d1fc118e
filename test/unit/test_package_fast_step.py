"""The fast node's step for imported packages (core/policy.PackageFastStep, built by fast_step_for).

Against the fixtures (LeRobot 0.6.1, tiny random weights): the node's step gives the chunk the
parity-tested ChunkFastStep gives on the same latent, frames and noise seed, for every fast kind; a
K/V-cache latent goes through a latent buffer as the nodes open it (writer with the slow part's
layout, reader with the step's) into per-tensor buffers; a package without a slow part takes the
cameras; a whole policy on a server gets the frames, the instruction and the state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_runtime.core.latent_buffer import LatentBufferConfig, open_latent_reader, open_latent_writer
from vla_runtime.core.policy import (
    ChunkFastStep,
    FastStep,
    LatentSlowStep,
    PackageFastStep,
    fast_step_for,
    latent_layout,
)
from vla_runtime.engines.model_package import load_model_package

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "test" / "fixtures" / "lerobot"
STATE = np.array([0.1, -0.2, 0.05, -2.1, 0.0, 2.0, 0.7, 0.03])
PROMPT = "pick up the red cube"
#: The seed sequence PackageFastStep draws its noise from (seed 0).
NODE_SEED = [0, 20261205]


def _frames(spec, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in spec.cameras}


def _latent(pkg, frames) -> dict[str, np.ndarray] | None:
    if pkg.spec.slow is None:
        return None
    return LatentSlowStep.from_package(pkg, list(frames)).run(frames, PROMPT, STATE).tensors


@pytest.mark.parametrize("name", ["pi0", "pi05", "smolvla", "act", "diffusion", "diffusion_ddim"])
def test_the_node_step_gives_the_parity_tested_chunk_for_every_fast_kind(name: str) -> None:
    with load_model_package(FIX / name) as pkg:
        frames = _frames(pkg.spec)
        latent = _latent(pkg, frames)
        step = fast_step_for(pkg, camera_names=list(frames), instruction=PROMPT)
        assert isinstance(step, PackageFastStep)
        got = step.run(STATE, None, latent, 0, frames)
        want = ChunkFastStep.from_package(pkg, camera_names=list(frames)).run(
            STATE, latent=latent, images=frames, instruction=PROMPT, rng=np.random.default_rng(NODE_SEED))
        np.testing.assert_array_equal(got.chunk, want.chunk)
        assert got.chunk.shape == (pkg.spec.chunk_horizon, pkg.spec.action_dim)
        assert got.raw.shape == got.chunk.shape and got.infer_ns > 0
        # Its features have the detector's layout and are finite (a multi-tensor latent summarised).
        f = np.zeros(step.feature_layout.size, np.float32)
        step.features_into(f, latent, got.raw, 0.2, 1.5, False)
        assert np.all(np.isfinite(f)) and tuple(f[-3:]) == pytest.approx((0.2, 1.5, 0.0))


def test_a_seeded_step_repeats_its_chunks_and_draws_fresh_noise_for_each() -> None:
    with load_model_package(FIX / "pi0") as pkg:
        frames = _frames(pkg.spec)
        latent = _latent(pkg, frames)
        a, b = fast_step_for(pkg, seed=3), fast_step_for(pkg, seed=3)
        a1, a2 = a.run(STATE, latent=latent).chunk, a.run(STATE, latent=latent).chunk
        np.testing.assert_array_equal(a1, b.run(STATE, latent=latent).chunk)
        assert not np.array_equal(a1, a2)


def test_a_kv_cache_goes_through_the_latent_buffer_into_per_tensor_buffers_as_one_version() -> None:
    with load_model_package(FIX / "smolvla") as pkg:
        frames = _frames(pkg.spec)
        slow = LatentSlowStep.from_package(pkg, list(frames))
        tensors = slow.run(frames, PROMPT, STATE).tensors
        step = fast_step_for(pkg)
        # The fast node opens its reader with the step's layout, the slow node its writer with the
        # slow step's: the same layout, so the buffers' fingerprints match.
        assert step.latent_tensors == slow.latent_layout() == latent_layout(pkg.spec)
        assert [n for n, _, _ in step.latent_tensors] == list(tensors)
        base = LatentBufferConfig(transport="inproc", name="test_package_fast_step_kv")
        with open_latent_writer(base.with_tensors(slow.latent_layout())) as writer, \
                open_latent_reader(base.with_tensors(step.latent_tensors)) as reader:
            buffers = {n: np.zeros(shape, dtype) for n, shape, dtype in step.latent_tensors}
            assert reader.read_into(buffers) is None
            writer.write(tensors, 123)
            sample = reader.read_into(buffers)
            assert sample is not None and sample.version == 1 and sample.obs_stamp_ns == 123
            for n, v in tensors.items():
                np.testing.assert_array_equal(buffers[n], v.reshape(buffers[n].shape), err_msg=n)
            snapshot = {n: t.copy() for n, t in buffers.items()}  # what the node hands its worker
            np.testing.assert_array_equal(fast_step_for(pkg).run(STATE, latent=snapshot).chunk,
                                          fast_step_for(pkg).run(STATE, latent=tensors).chunk)
        assert step.has_latent and step.cameras == []


def test_a_package_without_a_slow_part_takes_the_cameras_in_the_fast_step() -> None:
    with load_model_package(FIX / "act") as pkg:
        step = fast_step_for(pkg, camera_names=["scene", "wrist"])
        assert not step.has_latent and step.latent_tensors is None and step.cameras == ["scene"]
        with pytest.raises(ValueError, match="no single K×D latent"):
            _ = step.latent_view
        with pytest.raises(KeyError, match="scene"):
            step.run(STATE)
        # A frame of another size than the package's is fitted in the step (the worker's thread).
        big = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        chunk = step.run(STATE, images={"scene": big}).chunk
        assert chunk.shape == (10, 8) and np.all(np.isfinite(chunk))
        assert step.step.obs.resized == ["scene"]
        f = np.zeros(step.feature_layout.size, np.float32)
        step.features_into(f, None, step.run(STATE, images={"scene": big}).raw, 0.05, 1.0, False)
        assert f[0] == 0.0 and step.feature_layout.latent_dim == 1
        with pytest.raises(ValueError, match="wants camera 'scene'"):
            fast_step_for(pkg, camera_names=["wrist"])


def test_schema_1_one_shot_stays_fast_step_and_a_flow_head_gets_the_package_step() -> None:
    with load_model_package(ROOT / "models" / "timing_reference", parts=("fast",)) as pkg:
        step = fast_step_for(pkg)
        assert isinstance(step, FastStep) and step.has_latent and step.latent_tensors is None and step.cameras == []
    with load_model_package(ROOT / "models" / "reference_reach_flow", parts=("fast",)) as pkg:
        step = fast_step_for(pkg)
        assert isinstance(step, PackageFastStep) and step.latent_tensors is None and step.uses_prefix
        assert step.latent_view.shape == (pkg.spec.latent.tokens, pkg.spec.latent.dim)
        latent = np.random.default_rng(0).normal(size=step.latent_view.shape).astype(np.float32)
        state = np.zeros(step.state_size)
        got = step.run(state, None, latent).chunk  # a K×D snapshot (the worker's) goes into the feed
        np.testing.assert_array_equal(step.latent_view, latent)
        assert got.shape == (pkg.spec.chunk_horizon, pkg.spec.action_dim)
    with load_model_package(FIX / "pi0", parts=("fast",)) as pkg, \
            pytest.raises(ValueError, match="several named tensors"):
        fast_step_for(pkg).run(STATE, None, latent)


class _Server:
    """A whole policy behind the engine interface (as engines/openpi_remote's), recording what it gets."""

    whole_policy = True
    provider = "fake-remote"

    def __init__(self, horizon: int, dim: int) -> None:
        self.shape = (horizon, dim)
        self.got: list[dict] = []

    def infer(self, feeds):
        self.got.append(dict(feeds))
        return {"actions": np.full(self.shape, 0.5, np.float32)}


def test_a_whole_policy_on_a_server_gets_the_frames_the_instruction_and_the_state() -> None:
    with load_model_package(FIX / "pi0", parts=("fast",)) as pkg:
        server = _Server(pkg.spec.chunk_horizon, pkg.spec.action_dim)
        step = fast_step_for(pkg, server, camera_names=["scene", "wrist"], instruction=PROMPT)
        assert not step.has_latent and step.cameras == ["scene", "wrist"] and not step.uses_prefix
        frames = _frames(pkg.spec)
        res = step.run(STATE, None, None, 0, frames)
        np.testing.assert_array_equal(res.chunk, np.full((10, 8), 0.5))
        (feeds,) = server.got
        assert str(feeds["prompt"]) == PROMPT and sorted(feeds) == ["prompt", "scene", "seed", "state", "wrist"]
        np.testing.assert_allclose(feeds["state"], STATE.astype(np.float32))
        step.run(STATE, None, None, 0, frames)
        assert int(server.got[1]["seed"]) != int(feeds["seed"])  # fresh noise per chunk, from the seeded generator

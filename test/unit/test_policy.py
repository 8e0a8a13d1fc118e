"""The policy step (core/policy): one SlowStep and one FastStep, used by the nodes, replay and sim-time eval."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from test.conftest import ROOT
from vla_runtime.core.action_space import ActionSpace, ProprioNormalizer
from vla_runtime.core.config import load_config
from vla_runtime.core.contract import FeatureLayout
from vla_runtime.core.measured_state import MeasuredState
from vla_runtime.core.model_spec import GraphSpec, ModelSpec
from vla_runtime.core.policy import FastResult, FastStep, SlowStep
from vla_runtime.engines.base import Engine, TensorInfo
from vla_runtime.engines.model_package import load_model_package

REACH = ROOT / "models" / "reference_reach"
ARM = [f"panda_joint{i}" for i in range(1, 8)]
ARM_STATE = [0.1, -0.3, 0.05, -2.2, 0.02, 1.9, 0.785]
S = 1_000_000_000


@pytest.fixture(scope="module")
def reach():
    pkg = load_model_package(REACH)
    yield pkg
    pkg.close()


def _image() -> np.ndarray:
    return (np.arange(96 * 96 * 3) % 251).astype(np.uint8).reshape(96, 96, 3)


class ScriptedEngine(Engine):
    """A fast-graph engine that returns a given raw output and keeps a copy of every feed it got."""

    def __init__(self, graph: GraphSpec, raw: np.ndarray) -> None:
        super().__init__()
        def info(ts):
            return [TensorInfo(t.name, tuple(t.shape), np.dtype(t.dtype)) for t in ts]

        self._set_io(info(graph.inputs), info(graph.outputs))
        self.raw = raw
        self.seen: list[dict[str, np.ndarray]] = []

    @property
    def provider(self) -> str:
        return "scripted"

    def _run(self, feeds):
        self.seen.append({k: v.copy() for k, v in feeds.items()})
        return {self.output_specs[0].name: self.raw.copy()}


def _variant(package: str, groups: list[dict]) -> ModelSpec:
    """A shipped package's spec with another action layout (same dims, same statistics)."""
    data = yaml.safe_load((ROOT / "models" / package / "model.yaml").read_text())
    data["action"]["groups"] = groups
    return ModelSpec.model_validate(data)


# ------------------------------------------------------------------------------------ FastStep
def test_fast_step_is_the_inline_step_it_replaces(reach):
    """Fixed latent and state → the engine's own output, decoded and made absolute, bit for bit."""
    spec, space = reach.spec, reach.action_space
    cfg = load_config(ROOT / "config" / "sim_panda_reach.yaml")
    step = FastStep.from_package(reach, use_prefix=cfg.scheduler.rtc_prefix)
    latent = np.random.default_rng(3).standard_normal((spec.latent.tokens, spec.latent.dim)).astype(np.float32)
    joints = dict(zip(ARM, ARM_STATE)) | {"panda_finger_joint1": 0.031}
    measured = step.measured_state(cfg.robot)
    measured.update_joints(tuple(joints), np.array(list(joints.values())))
    assert measured.complete
    state = measured.values[measured.index(step.state_layout)]

    result = step.run(state, latent=latent)

    # What the node, replay and sim-time each wrote out by hand before: feeds by role, the gripper
    # dim read from the config's gripper joint, decode, to_absolute.
    named = dict(zip(ARM, ARM_STATE)) | {"gripper/gripper": 0.031}
    feeds = {t.name: (latent[None] if t.role == "latent" else reach.proprio(named)) for t in spec.fast.inputs}
    raw = reach.fast_engine.infer(feeds)["actions"]
    expected = space.to_absolute(space.decode(raw), named)
    assert isinstance(result, FastResult)
    assert result.chunk.shape == (spec.chunk_horizon, space.dim)
    assert np.array_equal(result.raw, raw) and np.array_equal(result.chunk, expected)
    assert result.infer_ns > 0
    # The two halves the 30 Hz tick calls give the same.
    step.latent_view[...] = latent
    raw2, _ = step.infer(state)
    assert np.array_equal(step.decode(raw2, state), expected)
    # The detector's features are the contract's layout of the same step.
    layout = FeatureLayout(spec.latent.dim, spec.chunk_horizon, space.dim)
    assert step.feature_layout == layout
    got = step.features_into(np.zeros(layout.size, np.float32), latent, raw, 0.25, 1.5, False)
    assert np.array_equal(got, layout.pack_into(np.zeros(layout.size, np.float32), latent, raw, 0.25, 1.5, False))


def test_delta_and_gripper_dims_are_measured_as_the_robot_config_says():
    """A joint-delta arm on the FR3: the gripper dim comes from fr3_finger_joint1 (the config's gripper
    joint), delta dims are made absolute against the measured joints, and the RTC prefix goes in relative."""
    cfg = load_config(ROOT / "config" / "franka_fr3.yaml")
    joints = [f"fr3_joint{i}" for i in range(1, 8)]
    spec = _variant("timing_reference_fr3", [{"name": "arm", "kind": "joint_delta", "joints": joints},
                                             {"name": "gripper", "kind": "gripper"}])
    space = ActionSpace.from_model_spec(spec)
    h, a = spec.chunk_horizon, space.dim
    raw = np.linspace(-1.0, 1.0, h * a, dtype=np.float32).reshape(1, h, a)
    engine = ScriptedEngine(spec.fast, raw)
    step = FastStep(spec, engine, space, ProprioNormalizer(spec.proprio), use_prefix=True)
    assert step.uses_prefix and step.needs_current
    measured = step.measured_state(cfg.robot)
    q = np.array([0.1, -0.7, 0.05, -2.3, 0.02, 1.6, 0.8])
    measured.update_joints(tuple(joints), q)
    assert not measured.complete and measured.missing() == ["gripper/gripper"]
    measured.update_joints(("fr3_finger_joint1",), np.array([0.025]))  # the gripper's own message
    assert measured.complete
    state = measured.values[measured.index(step.state_layout)]
    named = dict(zip(joints, q)) | {"gripper/gripper": 0.025}

    res = step.run(state)
    decoded = space.decode(raw)
    assert np.allclose(res.chunk[:, :7], q + decoded[:, :7])      # delta arm: current + delta
    assert np.array_equal(res.chunk[:, 7], decoded[:, 7])         # gripper: absolute command
    assert np.array_equal(res.chunk, space.to_absolute(decoded, named))
    assert np.array_equal(engine.seen[-1]["proprio"], ProprioNormalizer(spec.proprio)(named))
    assert not engine.seen[-1]["prefix_mask"].any()  # no prefix: no conditioning

    # The executing plan (absolute) is fed back relative to the measured state, masked.
    plan = res.chunk + 0.01
    mask = np.arange(h) < 3
    step.run(state, prefix=(plan, mask))
    fed = engine.seen[-1]
    assert np.array_equal(fed["prefix_mask"], mask.astype(np.float32)[None])
    assert np.array_equal(fed["prev_chunk"], space.encode(space.to_relative(plan, named)))
    step.run(state, prefix=(plan, np.zeros(h, bool)))  # nothing will execute first: cleared
    assert not engine.seen[-1]["prev_chunk"].any() and not engine.seen[-1]["prefix_mask"].any()

    off = FastStep(spec, engine, space, ProprioNormalizer(spec.proprio), use_prefix=False)
    off.run(state, prefix=(plan, mask))  # rtc_prefix off: the prefix feeds stay zero
    assert not off.uses_prefix and not engine.seen[-1]["prefix_mask"].any()


def test_cartesian_delta_dims_read_the_measured_hand_pose():
    cfg = load_config(ROOT / "config" / "franka_fr3.yaml")
    spec = _variant("timing_reference_fr3", [
        {"name": "arm", "kind": "cartesian_delta", "rotation": "quaternion", "frame": "fr3_link0"},
        {"name": "gripper", "kind": "gripper"}])
    space = ActionSpace.from_model_spec(spec)
    h, a = spec.chunk_horizon, space.dim
    raw = np.random.default_rng(1).uniform(-0.5, 0.5, (1, h, a)).astype(np.float32)
    step = FastStep(spec, ScriptedEngine(spec.fast, raw), space, ProprioNormalizer(spec.proprio), use_prefix=False)
    measured = step.measured_state(cfg.robot)
    assert measured.needs_pose
    joints = [f"fr3_joint{i}" for i in range(1, 8)]
    measured.update_joints((*joints, "fr3_finger_joint1"), np.array([0.0, -0.8, 0.0, -2.4, 0.0, 1.6, 0.8, 0.03]))
    assert not measured.complete  # the pose has not come yet
    pose = (0.45, -0.05, 0.4, 1.0, 0.0, 0.0, 0.0)
    measured.update_pose(pose)
    state = measured.values[measured.index(step.state_layout)]
    current = dict(zip(("arm/x", "arm/y", "arm/z", "arm/qx", "arm/qy", "arm/qz", "arm/qw"), pose))
    assert np.array_equal(step.run(state).chunk, space.to_absolute(space.decode(raw), current))


def test_bad_output_and_bad_state_raise_naming_them(reach):
    step = FastStep.from_package(reach, use_prefix=False)
    state = np.array([*ARM_STATE, 0.04])
    nan_latent = np.full(step.latent_view.shape, np.nan, np.float32)
    with pytest.raises(ValueError, match=r"fast graph output 'actions': raw actions contain NaN"):
        step.run(state, latent=nan_latent)
    raw, _ = step.infer(state, latent=np.zeros(step.latent_view.shape, np.float32))
    raw[0, 3, 2] = np.inf
    with pytest.raises(ValueError, match="'actions'.*NaN or inf"):
        step.decode(raw, state)
    with pytest.raises(ValueError, match=r"'actions': actions must have shape \[16, 8\]"):
        step.decode(raw[:, :5], state)
    with pytest.raises(ValueError, match=r"state must have 8 values.*got shape \(7,\)"):
        step.run(state[:7])


def test_measured_state_for_robot_takes_aliases_from_the_groups():
    cfg = load_config(ROOT / "config" / "franka_fr3.yaml")
    st = MeasuredState.for_robot(["fr3_joint1", "gripper/gripper", "arm/qw"], cfg.robot)
    st.update_joints(("fr3_joint1", "fr3_finger_joint1"), np.array([0.5, 0.02]))
    st.update_pose((0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0))
    assert st.complete
    assert st.values[st.index(["fr3_joint1", "gripper/gripper", "arm/qw"])].tolist() == [0.5, 0.02, 1.0]
    panda = load_config(ROOT / "config" / "sim_panda.yaml").robot
    assert not MeasuredState.for_robot(["gripper/gripper"], panda).needs_pose


# ------------------------------------------------------------------------------------ SlowStep
def test_slow_step_is_the_slow_engine_on_the_frame_and_instruction(reach):
    step = SlowStep.from_package(reach, ["scene"])
    assert step.cameras == ["scene"]
    img = _image()
    for text in ("touch the red cube", "touch the blue cube", "touch the red cube"):
        tok = reach.tokenizer.encode(text)
        by_hand = {"image": img.transpose(2, 0, 1)[None].copy(), "instruction_ids": tok.ids,
                   "instruction_mask": tok.mask}
        expected = reach.slow_engine.infer(by_hand)["latent"].reshape(4, 64)
        got = step.run({"scene": img}, text)
        assert got.latent.shape == (4, 64) and np.array_equal(got.latent, expected), text
        assert got.infer_ns > 0
    with pytest.raises(KeyError, match="no image from camera 'scene'"):
        step.run({}, "touch the red cube")


# ------------------------------------------------------------------- replay and sim time use them
class _Calls:
    """Counts calls of a step's ``run`` and passes them through (the real step runs)."""

    def __init__(self, monkeypatch, cls) -> None:
        self.n = 0
        real = cls.run

        def run(step, *args, **kwargs):
            self.n += 1
            return real(step, *args, **kwargs)

        monkeypatch.setattr(cls, "run", run)


def _write_bag(path, reach, state_msgs: list[JointState], chunk: np.ndarray) -> None:
    from vla_runtime.data.recording import BagRecorder, TopicSpec

    topics = [TopicSpec("/joint_states", "sensor_msgs/msg/JointState"),
              TopicSpec("/camera/scene/image_raw", "sensor_msgs/msg/Image"),
              TopicSpec("/vla/instruction", "std_msgs/msg/String", latched=True),
              TopicSpec("/vla/action_chunk", "trajectory_msgs/msg/JointTrajectory")]
    rec = BagRecorder(path, topics)
    rec.write("/vla/instruction", S, serialize_message(String(data="touch the red cube")))
    for i, msg in enumerate(state_msgs):  # arm and gripper in separate messages, as many drivers send them
        rec.write("/joint_states", S + 1 + i, serialize_message(msg))
    rec.write("/camera/scene/image_raw", S + 10, serialize_message(Image(
        height=96, width=96, encoding="rgb8", step=288, data=_image().tobytes())))
    for k in range(2):
        plan = JointTrajectory(joint_names=list(reach.action_space.dim_names))
        plan.header.stamp.sec = 10 + k
        for i in range(4):
            pt = JointTrajectoryPoint(positions=chunk[i].tolist())
            pt.time_from_start.nanosec = int(i * 1e9 / reach.spec.control_rate_hz)
            plan.points.append(pt)
        rec.write("/vla/action_chunk", S + 20 + k, serialize_message(plan))
    rec.stop()


def test_replay_runs_the_policy_step_with_the_configs_gripper_joint(tmp_path, reach, monkeypatch):
    """A robot whose gripper joint is not called '*finger*' and which sends arm and gripper states in
    separate messages replays through the one FastStep/SlowStep, to the model's own chunk."""
    from vla_runtime.commands.replay import replay

    cfg = load_config(ROOT / "config" / "sim_panda_reach.yaml")
    robot = cfg.robot
    renamed = [j.model_copy(update={"name": "jaw"}) if j.name == "panda_finger_joint1" else j for j in robot.joints]
    groups = {g: grp.model_copy(update={"joints": ["jaw"]}) if grp.controller == "gripper" else grp
              for g, grp in robot.groups.items()}
    cfg = cfg.model_copy(update={"robot": robot.model_copy(update={"joints": renamed, "groups": groups})})

    latent = SlowStep.from_package(reach, ["scene"]).run({"scene": _image()}, "touch the red cube").latent
    state = np.array([*ARM_STATE, 0.02])
    chunk = FastStep.from_package(reach, use_prefix=False).run(state, latent=latent).chunk
    msgs = [JointState(name=ARM, position=ARM_STATE), JointState(name=["jaw"], position=[0.02])]
    _write_bag(tmp_path / "bag", reach, msgs, chunk)

    slow_calls, fast_calls = _Calls(monkeypatch, SlowStep), _Calls(monkeypatch, FastStep)
    report = replay(tmp_path / "bag", REACH, config=cfg)
    assert report["ticks"] == 2 and not report["skipped"], report
    assert report["max_abs_diff"] < 1e-6, report
    assert fast_calls.n == 2 and slow_calls.n == 1  # one latent for the one frame

    # The default robot (the simulated Panda) measures its gripper with panda_finger_joint1, not 'jaw'.
    report = replay(tmp_path / "bag", REACH)
    assert report["ticks"] == 0 and report["skipped"] == {"proprio: measured state lacks ['gripper/gripper']": 2}


def test_sim_time_episode_runs_the_policy_step(monkeypatch):
    from vla_runtime.commands.evaluation import simtime_episode

    slow_calls, fast_calls = _Calls(monkeypatch, SlowStep), _Calls(monkeypatch, FastStep)
    row = simtime_episode("touch", 0, "async", None, ROOT / "config" / "sim_panda_reach.yaml")
    assert row["success"], row
    ticks = round(row["time_to_success_s"] * 30)  # the episode's fast ticks (the first latent is at tick 0)
    assert fast_calls.n == ticks  # every tick re-plans through the step
    assert slow_calls.n == -(-ticks // 6)  # a slow step every 6th tick (5 Hz)

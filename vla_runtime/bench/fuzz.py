"""``vla-runtime bench fuzz``: generated bad input against ``check`` and against the running graph.

Two parts, one JSON:

* **configs and model packages** (:func:`fuzz_configs`): generated mutations of a shipped config
  and of the trained reference package (absurd numbers, wrong types, missing and unknown fields,
  nodes twice, files that are not text or not YAML, limits over the datasheet, missing key files;
  non-finite or absurd normalisation statistics, shapes, dtypes and roles that disagree with the
  graphs, corrupt ONNX files, corrupt detector heads, broken vocabularies) go through
  :func:`~vla_runtime.commands.check.check_config` in this process. Each case is refused with a
  reason or passes every check including the dry run; an exception escaping ``check`` is a crash.
* **the running graph** (:func:`fuzz_graph`): generated messages on every topic the runtime
  subscribes to (joint states, end-effector pose, plans, camera frames, the instruction, policy
  features, the detector heartbeat, the teleop topics), some of each kind that broke things before
  (NaN, 1e30, names twice, lengths that disagree, stamps an hour away) and the rest random but
  valid CDR; it counts node crashes, tracebacks in the node logs, every node's refusals per reason,
  and the largest hand motion over the baseline.

Every case is reproducible from its seed; the report lists cases per class, refusals, crashes
(with their traceback) and what was accepted.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import yaml

from vla_runtime.core.config import PROJECT_ROOT, _read_yaml

BASE_CONFIG = PROJECT_ROOT / "config" / "sim_panda_reach_detector.yaml"
BASE_PACKAGE = PROJECT_ROOT / "models" / "reference_reach"
ABSURD_NUMBERS = (1e9, -1e9, 1e300, 0.0, -1.0, math.nan, math.inf, -math.inf)
OTHER_TYPES = ("text", [], {}, None, True, [1, 2, 3], {"a": 1})

Case = tuple[str, Callable[[Path, random.Random], None]]


# ------------------------------------------------------------------------------ tree helpers
def _leaves(tree, path=()):
    """Every (path, value) of a YAML tree whose value is not a mapping or a list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, (*path, i))
    else:
        yield path, tree


def _set(tree, path, value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _delete(tree, path) -> None:
    for k in path[:-1]:
        tree = tree[k]
    del tree[path[-1]]


def _other(rng: random.Random, choices, current):
    """A choice that differs from ``current`` (a mutation that changes nothing tests nothing)."""
    options = [c for c in choices if not (c == current or (c != c and current != current))]
    return copy.deepcopy(rng.choice(options))


def _numeric_paths(tree) -> list[tuple]:
    return [p for p, v in _leaves(tree) if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _mapping_keys(tree, path=()) -> list[tuple]:
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append((*path, k))
            out += _mapping_keys(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _mapping_keys(v, (*path, i))
    return out


# ------------------------------------------------------------------------------ config cases
def _config_cases() -> list[Case]:
    def numeric(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        path = rng.choice(_numeric_paths(data))
        _set(data, path, _other(rng, ABSURD_NUMBERS, _get(data, path)))
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def wrong_type(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        path = rng.choice([p for p, _ in _leaves(data)])
        _set(data, path, _other(rng, OTHER_TYPES, _get(data, path)))
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def missing(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        _delete(data, rng.choice(_mapping_keys(data)))
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def unknown_key(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        target = rng.choice([p for p in _mapping_keys(data) if isinstance(_get(data, p), dict)] or [()])
        _get(data, target)[rng.choice(["velocty", "fast_hzz", "pakage", "saftey", "x" * 50])] = 1
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def node_twice(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        data["nodes"].append(rng.choice(data["nodes"]))
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def not_text(d: Path, rng: random.Random) -> None:
        (d / "config.yaml").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))))

    def broken_yaml(d: Path, rng: random.Random) -> None:
        text = (d / "config.yaml").read_text()
        cut = rng.randrange(1, len(text))
        (d / "config.yaml").write_text(rng.choice([text[:cut], text[:cut] + "\t: [{", "a: &x [*x]\n", "- - - -\n"]))

    def over_datasheet(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        j = rng.choice(data["robot"]["joints"])
        field = rng.choice(["velocity", "acceleration", "effort", "position"])
        j[field] = [j["position"][0] * 10, j["position"][1] * 10] if field == "position" else j[field] * 100
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    def missing_keys(d: Path, rng: random.Random) -> None:
        data = yaml.safe_load((d / "config.yaml").read_text())
        data["latent"] = {"transport": "zmq", "server_key": str(d / "keys" / "s"), "client_key": str(d / "keys" / "c"),
                          "endpoint": f"tcp://127.0.0.1:{rng.randrange(20000, 60000)}"}
        (d / "config.yaml").write_text(yaml.safe_dump(data))

    return [("config: absurd number", numeric), ("config: wrong type", wrong_type), ("config: missing field", missing),
            ("config: unknown field", unknown_key), ("config: node listed twice", node_twice),
            ("config: not text", not_text), ("config: not YAML", broken_yaml),
            ("config: limit over the datasheet", over_datasheet), ("config: missing CURVE key files", missing_keys)]


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# ------------------------------------------------------------------------------ package cases
def _package_cases() -> list[Case]:
    def edit_model(fn: Callable[[dict, random.Random], None]) -> Callable[[Path, random.Random], None]:
        def apply(d: Path, rng: random.Random) -> None:
            path = d / "pkg" / "model.yaml"
            data = yaml.safe_load(path.read_text())
            fn(data, rng)
            path.write_text(yaml.safe_dump(data))

        return apply

    def stats(m: dict, rng: random.Random) -> None:
        section = rng.choice(["action", "proprio"])
        norm = dict(m[section]["normalization"])
        key = rng.choice(["mean", "std"])
        values = list(norm[key])
        i = rng.randrange(len(values))
        values[i] = _other(rng, (*ABSURD_NUMBERS, 1e6, 1e-12), values[i])
        norm[key] = values
        m[section]["normalization"] = norm

    def shape(m: dict, rng: random.Random) -> None:
        graph = m[rng.choice(["slow", "fast"])]
        t = rng.choice(graph["inputs"] + graph["outputs"])
        dims = list(t["shape"])
        i = rng.randrange(len(dims))
        dims[i] = _other(rng, [1, 2, 7, 9, 1000, None], dims[i])
        t["shape"] = dims

    def dtype(m: dict, rng: random.Random) -> None:
        graph = m[rng.choice(["slow", "fast"])]
        t = rng.choice(graph["inputs"] + graph["outputs"])
        dtypes = ["float32", "float16", "float64", "int32", "int64", "uint8", "bool", "complex"]
        t["dtype"] = _other(rng, dtypes, t["dtype"])

    def role(m: dict, rng: random.Random) -> None:
        graph = m[rng.choice(["slow", "fast"])]
        t = rng.choice(graph["inputs"] + graph["outputs"])
        roles = ["image", "latent", "proprio", "actions", "prev_chunk", "other", "velocity"]
        t["role"] = _other(rng, roles, t.get("role"))

    def vocab(m: dict, rng: random.Random) -> None:
        v = list(m["tokenizer"]["vocab"])
        if rng.random() < 0.5:
            v.append(v[rng.randrange(len(v))])
        else:
            v.remove(rng.choice(["<pad>", "<unk>"]))
        m["tokenizer"]["vocab"] = v

    def counts(m: dict, rng: random.Random) -> None:
        key = rng.choice(["chunk_horizon", "action_dim", "control_rate_hz"])
        m[key] = _other(rng, [0, -1, 10**9, 7, 0.5], m[key])

    def onnx(d: Path, rng: random.Random) -> None:
        f = d / "pkg" / rng.choice(["slow.onnx", "fast.onnx"])
        raw = f.read_bytes()
        mode = rng.randrange(3)
        if mode == 0:
            f.write_bytes(raw[: rng.randrange(len(raw))])
        elif mode == 1:
            f.write_bytes(bytes(rng.randrange(256) for _ in range(512)))
        else:
            b = bytearray(raw)
            for _ in range(64):
                b[rng.randrange(len(b))] = rng.randrange(256)
            f.write_bytes(bytes(b))

    def detector(d: Path, rng: random.Random) -> None:
        f = d / "pkg" / "detector" / rng.choice(["weights.npz", "detector.yaml"])
        raw = f.read_bytes()
        f.write_bytes(raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else
                      bytes(rng.randrange(256) for _ in range(256)))

    return [("package: absurd statistic", edit_model(stats)), ("package: shape vs graph", edit_model(shape)),
            ("package: dtype vs graph", edit_model(dtype)), ("package: tensor role", edit_model(role)),
            ("package: vocabulary", edit_model(vocab)), ("package: horizon/dims/rate", edit_model(counts)),
            ("package: corrupt ONNX", onnx), ("package: corrupt detector head", detector)]


def fuzz_configs(cases: int = 120, seed: int = 0) -> dict:
    """Run ``cases`` generated bad configs and model packages through ``vla-runtime check``.

    Returns:
        ``cases``, ``per_class`` {class: {tried, refused, accepted, crashed}}, ``crashes`` (class,
        seed, traceback), ``accepted`` (class, seed: mutations every check let through, for review),
        ``refusal_examples`` (one problem line per class).
    """
    from vla_runtime.commands.check import check_config

    classes = _config_cases() + _package_cases()
    per_class = {name: {"tried": 0, "refused": 0, "accepted": 0, "crashed": 0} for name, _ in classes}
    crashes, accepted, examples = [], [], {}
    with tempfile.TemporaryDirectory(prefix="vla_fuzz_") as tmp:
        for k in range(cases):
            name, mutate = classes[k % len(classes)]
            rng = random.Random(seed * 100_003 + k)
            d = Path(tmp) / f"case{k}"
            shutil.copytree(BASE_PACKAGE, d / "pkg")
            data = _read_yaml(BASE_CONFIG)
            data["model"]["package"] = str(d / "pkg")
            (d / "config.yaml").write_text(yaml.safe_dump(data))
            per_class[name]["tried"] += 1
            try:
                mutate(d, rng)
                report = check_config(str(d / "config.yaml"))
            except Exception:  # noqa: BLE001 - anything escaping check is what this benchmark looks for
                per_class[name]["crashed"] += 1
                crashes.append({"class": name, "case": k, "traceback": traceback.format_exc()[-2000:]})
                continue
            if report.ok:
                per_class[name]["accepted"] += 1
                accepted.append({"class": name, "case": k})
            else:
                per_class[name]["refused"] += 1
                examples.setdefault(name, report.problems[0][:300])
            shutil.rmtree(d, ignore_errors=True)
    return {"cases": cases, "classes": len(classes), "per_class": per_class, "crashes": crashes,
            "accepted": accepted, "refusal_examples": examples}


# ------------------------------------------------------------------------------ the running graph
GRAPH_CONFIG = PROJECT_ROOT / "config" / "sim_panda_detector.yaml"
_WORDS = ("", "x", "panda_joint1", "gripper/gripper", "arm/x", "élan ✓", "\x00", "a" * 300, "../../etc",
          "touch the red cube", "panda_joint99")


def _floats(rng: np.random.Generator, n: int) -> list[float]:
    """``n`` values from a mix of sane numbers and the kinds that break things."""
    pool = np.concatenate([rng.normal(0, 1, 8), [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e9, 0.0, -0.0, 5e-324]])
    return [float(v) for v in rng.choice(pool, size=n)]


def _stamp(rng: np.random.Generator):
    from vla_runtime.nodes.common import ns_to_stamp

    now = time.time_ns()
    return ns_to_stamp(int(rng.choice([now, now, now + 3600 * 10**9, now - 3600 * 10**9, 0, now + 10**8,
                                       2**62])))


def _graph_classes(cfg, names: list[str]) -> list[tuple[str, str, type, Callable]]:
    """(class, topic, message type, make(rng) → message) of every input class the runtime takes."""
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, Float64, Header, MultiArrayDimension, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from vla_runtime.core.contract import (
        TOPIC_ACTION_CHUNK,
        TOPIC_DETECTOR_HEARTBEAT,
        TOPIC_EE_POSE,
        TOPIC_INSTRUCTION,
        TOPIC_JOINT_STATES,
        TOPIC_POLICY_FEATURES,
        TOPIC_TELEOP_GRIPPER,
        TOPIC_TELEOP_JOINT_JOG,
        TOPIC_TELEOP_POSE,
        TOPIC_TELEOP_TWIST,
    )

    def js_nonfinite(rng):
        m = JointState(name=names, position=[float(v) for v in rng.normal(0, 0.5, len(names))])
        m.position[int(rng.integers(len(names)))] = float(rng.choice([np.nan, np.inf, -np.inf]))
        m.header.stamp = _stamp(rng)
        return m

    def js_spoof(rng):
        k = int(rng.integers(0, 2 * len(names)))
        pick = [str(rng.choice(names)) for _ in range(len(names))] if rng.random() < 0.3 else names
        m = JointState(name=pick, position=_floats(rng, k), velocity=_floats(rng, int(rng.integers(0, 12))))
        m.header.stamp = _stamp(rng)
        return m

    def js_random(rng):
        n = int(rng.integers(0, 20))
        m = JointState(name=[str(rng.choice(_WORDS + tuple(names))) for _ in range(n)],
                       position=_floats(rng, int(rng.integers(0, 20))), effort=_floats(rng, int(rng.integers(0, 3))))
        m.header.frame_id = str(rng.choice(_WORDS))
        m.header.stamp = _stamp(rng)
        return m

    def pose(rng):
        m = PoseStamped()
        p, o = m.pose.position, m.pose.orientation
        p.x, p.y, p.z = _floats(rng, 3)
        o.x, o.y, o.z, o.w = _floats(rng, 4) if rng.random() < 0.7 else (0.0, 0.0, 0.0, 0.0)
        m.header.stamp = _stamp(rng)
        return m

    dims = [*names[:7], "gripper/gripper"]

    def plan(rng):
        m = JointTrajectory(joint_names=dims if rng.random() < 0.6 else
                            [str(rng.choice(_WORDS + tuple(dims))) for _ in range(int(rng.integers(0, 10)))])
        m.header.stamp = _stamp(rng)
        m.header.frame_id = str(rng.choice(_WORDS))
        for k in range(int(rng.integers(0, 30))):
            pt = JointTrajectoryPoint(positions=_floats(rng, len(m.joint_names) if rng.random() < 0.8 else
                                                         int(rng.integers(0, 12))))
            pt.time_from_start.nanosec = int(rng.integers(0, 999_999_999)) if rng.random() < 0.2 else k * 10_000_000
            m.points.append(pt)
        return m

    cam = cfg.cameras[0]

    def image(rng):
        h, w = int(rng.choice([0, 1, cam.height, 4096])), int(rng.choice([0, 3, cam.width]))
        enc = str(rng.choice(["rgb8", "bgr8", "mono8", "16UC1", "", "rgb8\x00"]))
        step = int(rng.choice([w * 3, w, 0, 7]))
        n = int(rng.choice([h * step, 0, 17, min(h * step, 1 << 20) + 1]))
        m = Image(height=h, width=w, encoding=enc, step=step, data=bytes(min(n, 1 << 21)))
        m.header.stamp = _stamp(rng)
        return m

    def instruction(rng):
        return String(data=str(rng.choice(_WORDS)) * int(rng.integers(1, 40)))

    def features(rng):
        m = Float32MultiArray(data=[float(np.float32(v)) if np.isfinite(v) else float(v)
                                    for v in _floats(rng, int(rng.integers(0, 300)))])
        label = str(rng.choice(["latent_mean:64|chunk_raw:16x8|latent_age_s,infer_ms,hold", *_WORDS]))
        m.layout.dim = [MultiArrayDimension(label=label, size=len(m.data), stride=len(m.data))]
        return m

    def heartbeat(rng):
        m = Header(frame_id=str(rng.choice(_WORDS)))
        m.stamp = _stamp(rng)
        return m

    def twist(rng):
        m = TwistStamped()
        m.header.frame_id = str(rng.choice(["", "base", "world", *_WORDS]))
        t = m.twist
        t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z = _floats(rng, 6)
        return m

    def jog(rng):
        n = int(rng.integers(0, 9))
        return JointState(name=[str(rng.choice(names + list(_WORDS))) for _ in range(n)],
                          velocity=_floats(rng, int(rng.integers(0, 9))))

    def teleop_pose(rng):
        m = pose(rng)
        m.header.frame_id = str(rng.choice(["", "base", *_WORDS]))
        return m

    def gripper(rng):
        return Float64(data=_floats(rng, 1)[0])

    return [
        ("joint_states: non-finite", TOPIC_JOINT_STATES, JointState, js_nonfinite),
        ("joint_states: spoofed names/lengths", TOPIC_JOINT_STATES, JointState, js_spoof),
        ("joint_states: random", TOPIC_JOINT_STATES, JointState, js_random),
        ("ee_pose: random", TOPIC_EE_POSE, PoseStamped, pose),
        ("action_chunk: random plans", TOPIC_ACTION_CHUNK, JointTrajectory, plan),
        ("camera: random images", cam.topic, Image, image),
        ("instruction: random text", TOPIC_INSTRUCTION, String, instruction),
        ("policy_features: random", TOPIC_POLICY_FEATURES, Float32MultiArray, features),
        ("detector_heartbeat: spoofed", TOPIC_DETECTOR_HEARTBEAT, Header, heartbeat),
        ("teleop twist (not engaged)", TOPIC_TELEOP_TWIST, TwistStamped, twist),
        ("teleop joint jog (not engaged)", TOPIC_TELEOP_JOINT_JOG, JointState, jog),
        ("teleop pose (not engaged)", TOPIC_TELEOP_POSE, PoseStamped, teleop_pose),
        ("teleop gripper (not engaged)", TOPIC_TELEOP_GRIPPER, Float64, gripper),
    ]


def _rejection_counts(kv: Mapping[str, str]) -> dict[str, int]:
    """The per-reason refusal counters of a node's diagnostics (``<what>_rejected.<reason>``, …)."""
    out = {}
    for k, v in kv.items():
        if ("rejected." in k or "rejected_by." in k or k in ("chunks_rejected", "rejected_images", "callback_errors",
                                                            "internal_errors")) and str(v).isdigit():
            out[k] = int(v)
    return out


def fuzz_graph(cases_per_class: int = 80, seed: int = 0, settle_s: float = 1.0, rate_hz: float = 100.0) -> dict:
    """Generated bad input on every topic the running graph subscribes to.

    The graph: ``config/sim_panda_detector.yaml`` (MuJoCo Panda, slow path, fast path, bridge,
    failure detector), the fast path with the null engine, so the hand stands still and any motion
    is the input's doing. For each input class (:func:`_graph_classes`): from a steady POLICY,
    ``cases_per_class`` generated messages at ``rate_hz`` on its topic; then the graph is brought
    back to POLICY (a halt a class provoked is reset, as an operator would) for the next class.

    Returns:
        ``per_class`` {class: {topic, cases, motion_mm, modes seen, refusals (counter deltas of
        every node)}}, ``crashes`` (nodes that exited), ``tracebacks`` (node logs with one),
        ``baseline_motion_mm``, ``max_extra_motion_mm``.
    """
    from sensor_msgs.msg import JointState

    from vla_runtime.core.config import load_config
    from vla_runtime.core.contract import (
        DIAG_DETECTOR,
        DIAG_FAST_PATH,
        DIAG_SLOW_PATH,
        TOPIC_EE_POSE,
        TOPIC_JOINT_STATES,
    )
    from vla_runtime.core.kinematics import kinematics_for
    from vla_runtime.graph.harness import DiagnosticsWatch, GraphHarness, PoseWatch, node_graph
    from vla_runtime.nodes.common import QOS_COMMAND, QOS_SENSOR

    rng = np.random.default_rng(seed)
    with GraphHarness(name="fuzz") as h:
        path = h.write_config(GRAPH_CONFIG, {"detector": {"learned": "off"}})
        cfg = load_config(path)
        diags, poses = DiagnosticsWatch(h.probe), PoseWatch(h.probe)
        joints = h.probe.collect(JointState, TOPIC_JOINT_STATES, QOS_SENSOR)
        chain = kinematics_for(cfg.robot.name, cfg.robot.groups["arm"].joints)

        def hand_motion_mm(t0: float, t1: float, topic: str) -> float:
            """The hand's largest distance from where it was at ``t0``, from a stream the class did
            not fuzz: /ee_pose, or (while /ee_pose is fuzzed) the joint states through the arm's model."""
            if topic != TOPIC_EE_POSE:
                return poses.max_displacement_mm(t0, t1) or 0.0
            arm = list(chain.joints)
            pts = [chain.forward([m.position[list(m.name).index(j)] for j in arm])[:3, 3]
                   for t, m in list(joints) if t0 <= t <= t1 and set(arm) <= set(m.name)]
            return float(np.linalg.norm(np.array(pts) - pts[0], axis=1).max() * 1e3) if pts else 0.0
        h.start_policy(node_graph(cfg, path, params={"action_chunk_node": {"engine": "null"}}))
        h.steady_policy(settle_s)

        def counters() -> dict[str, int]:
            out = {f"bridge.{k}": v for k, v in _rejection_counts(h.safety.state()).items()}
            for node, name in (("fast", DIAG_FAST_PATH), ("slow", DIAG_SLOW_PATH), ("detector", DIAG_DETECTOR)):
                out.update({f"{node}.{k}": v for k, v in _rejection_counts(diags.latest(name)).items()})
            return out

        baseline = []
        for _ in range(3):
            t0 = time.monotonic()
            h.run_for(2.0)
            baseline.append(poses.max_displacement_mm(t0, time.monotonic()) or 0.0)
        per_class: dict[str, dict] = {}
        crashes: dict[str, int] = {}
        names = list(cfg.robot.joint_names)
        for label, topic, msg_type, make in _graph_classes(cfg, names):
            pub = h.probe.node.create_publisher(msg_type, topic, QOS_COMMAND)
            before, n_reports = counters(), len(h.safety.reports)
            t0 = time.monotonic()
            for _ in range(cases_per_class):
                pub.publish(make(rng))
                time.sleep(1.0 / rate_hz)
            t1 = time.monotonic()
            h.run_for(1.2)  # what the burst set in motion lands; diagnostics refresh (1–2 Hz)
            motion = hand_motion_mm(t0, time.monotonic(), topic)
            after = counters()
            dead = h.dead()
            modes = sorted({m.message for _, m in list(h.safety.reports)[n_reports:]})
            per_class[label] = {
                "topic": topic, "cases": cases_per_class, "seconds": round(t1 - t0, 2), "motion_mm": round(motion, 2),
                "modes": modes, "refusals": {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)},
            }
            h.probe.node.destroy_publisher(pub)
            if dead:
                crashes.update(dead)
                break
            h.steady_policy(settle_s, timeout=60.0)
        tracebacks = sorted(p.name for p in h.log_dir.glob("*.log") if "Traceback" in p.read_text(errors="replace"))
        base = max(baseline)
        worst = max((c["motion_mm"] for c in per_class.values()), default=0.0)
        return {"config": str(GRAPH_CONFIG.relative_to(PROJECT_ROOT)), "fast_engine": "null",
                "cases": sum(c["cases"] for c in per_class.values()), "classes": len(per_class),
                "per_class": per_class, "crashes": crashes, "tracebacks": tracebacks,
                "baseline_motion_mm": round(base, 2), "max_extra_motion_mm": round(max(0.0, worst - base), 2),
                "logs": h.logs() if crashes or tracebacks else ""}


def bench_fuzz(config_cases: int = 120, seed: int = 0, cases_per_class: int = 80) -> dict:
    """The whole fuzz benchmark (see the module docstring) with its targets."""
    cfg = fuzz_configs(config_cases, seed)
    graph = fuzz_graph(cases_per_class, seed)
    refused = sum(c["refused"] for c in cfg["per_class"].values())
    unrefused = [k for k, c in graph["per_class"].items() if not c["refusals"]]
    targets = {
        "runtime_cases_ge_1000": graph["cases"] >= 1000,
        "runtime_classes_ge_10": graph["classes"] >= 10,
        "no_node_crash": not graph["crashes"],
        "no_traceback": not graph["tracebacks"],
        "extra_motion_le_5mm": graph["max_extra_motion_mm"] <= 5.0,
        "config_model_cases_ge_100": cfg["cases"] >= 100,
        "config_model_no_crash": not cfg["crashes"],
    }
    return {"benchmark": "fuzz", "graph": {**graph, "classes_without_counted_refusal": unrefused},
            "configs_and_packages": {**cfg, "refused": refused}, "targets": targets, "passed": all(targets.values())}


__all__ = ["bench_fuzz", "fuzz_configs"]

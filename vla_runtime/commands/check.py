"""``vla-runtime check``: validate a config and every model package it names, before any robot moves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_runtime.core.config import ConfigError, RuntimeConfig, load_config
from vla_runtime.core.controller_kinds import JOINT_KINDS, KINDS
from vla_runtime.core.model_spec import ModelSpec


@dataclass
class CheckReport:
    """Outcome of a check: the problems (empty when valid) and what was verified."""

    source: str
    problems: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"config": self.source, "ok": self.ok, "problems": self.problems, "verified": self.verified}


def model_robot_problems(cfg: RuntimeConfig, dim_names: list[str]) -> list[str]:
    """Does the model's action layout fit the robot? Every action dim must land on the profile.

    Joint dims must be profile joints; ``<group>/...`` dims must name a profile group whose
    controller can take them (Cartesian pose dims need a cartesian_impedance group, ``gripper``
    a gripper group, base dims a base_twist group).
    """
    problems = []
    joints = set(cfg.robot.joint_names)
    for dim in dim_names:
        if "/" not in dim:
            if dim not in joints:
                problems.append(f"model action dim {dim!r} is not a joint of robot {cfg.robot.name!r}")
            continue
        group, _, comp = dim.partition("/")
        g = cfg.robot.groups.get(group)
        if g is None:
            problems.append(f"model action dim {dim!r}: robot {cfg.robot.name!r} has no group {group!r}")
            continue
        allowed = set(KINDS[g.controller].dims)
        if comp.startswith("stiffness") and g.stiffness_limits is not None:
            continue
        if comp not in allowed:
            problems.append(
                f"model action dim {dim!r} cannot drive group {group!r} ({g.controller} controller)"
            )
    commanded_joints = {d for d in dim_names if "/" not in d}
    for gname, g in cfg.robot.groups.items():
        if g.controller in JOINT_KINDS:
            missing = [j for j in g.joints if j not in commanded_joints]
            if missing and len(missing) < len(g.joints):
                problems.append(f"group {gname!r}: the model commands some of its joints but not {missing}")
    return problems


def curve_key_problems(cfg: RuntimeConfig) -> list[str]:
    """The CURVE key files each latent-link end on this machine needs, where they are missing.

    The slow path (the writer) needs the server key pair and the clients it admits; the fast path
    (the reader) its own key pair and the server's public key. Only the nodes this config starts
    here are checked: the other end's secret key lives on the other machine.
    """
    lat = cfg.latent
    if lat.transport != "zmq":
        return []
    need: dict[str, list[tuple[str, str]]] = {}
    if "slow_reasoner" in cfg.nodes:
        need["slow_reasoner"] = [("latent.server_key", f"{lat.server_key}.key_secret"),
                                 ("latent.server_key", f"{lat.server_key}.key")]
        if lat.authorized_clients_dir is None:
            need["slow_reasoner"].append(("latent.client_key", f"{lat.client_key}.key"))
    if "action_chunk_node" in cfg.nodes:
        need["action_chunk_node"] = [("latent.client_key", f"{lat.client_key}.key_secret"),
                                     ("latent.client_key", f"{lat.client_key}.key"),
                                     ("latent.server_key", f"{lat.server_key}.key")]
    problems = []
    for node, files in need.items():
        for field_name, rel in files:
            path = cfg.resolve_path(rel)
            if not path.is_file():
                problems.append(f"{field_name}: {node} needs {path}, which does not exist (vla-runtime keys)")
    if "slow_reasoner" in cfg.nodes and lat.authorized_clients_dir is not None:
        d = cfg.resolve_path(lat.authorized_clients_dir)
        if not d.is_dir() or not any(d.glob("*.key")):
            problems.append(f"latent.authorized_clients_dir = {lat.authorized_clients_dir!r}: no *.key public keys "
                            f"in {d}: no fast path could connect")
    return problems


def normalization_problems(cfg: RuntimeConfig, spec: ModelSpec) -> list[str]:
    """Normalisation statistics that cannot come from this robot's data.

    A joint's action or proprio statistics must describe values inside its position range: a mean
    (or min/max) outside the limits, or a std wider than the whole range, maps the model's
    normalised output far outside the robot's reach (an action std of 1e6 drove every joint to its
    limit). Gripper dims are judged against the gripper's range the same way.
    """
    ranges: dict[str, tuple[float, float]] = {j.name: j.position for j in cfg.robot.joints}
    for gname, g in cfg.robot.groups.items():
        if g.controller == "gripper":
            ranges[f"{gname}/gripper"] = tuple(sorted(g.gripper_range)) if g.gripper_range else \
                cfg.robot.joint(g.joints[0]).position
    from vla_runtime.core.action_space import dim_names

    problems = []
    for what, names, norm in (("action", list(dim_names(spec.action)), spec.action.normalization),
                              ("proprio", list(spec.proprio.names), spec.proprio.normalization)):
        if norm.is_identity:
            continue
        for i, name in enumerate(names):
            if name not in ranges:
                continue
            lo, hi = ranges[name]
            span = hi - lo
            slack = 0.1 * span
            if norm.kind == "mean_std":
                mean, std = norm.mean[i], norm.std[i]
                if not lo - slack <= mean <= hi + slack:
                    problems.append(f"{what}.normalization.mean[{i}] ({name}) = {mean} lies outside its range "
                                    f"[{lo}, {hi}]")
                if std > span:
                    problems.append(f"{what}.normalization.std[{i}] ({name}) = {std} is wider than its whole range "
                                    f"[{lo}, {hi}]: not statistics of this robot")
            elif norm.bounds() is not None:  # min_max, quantiles, quantile10
                lows, highs = norm.bounds()
                a, b = lows[i], highs[i]
                if a < lo - slack or b > hi + slack:
                    problems.append(f"{what}.normalization {norm.kind}[{i}] ({name}) = [{a}, {b}] exceeds its range "
                                    f"[{lo}, {hi}]")
    return problems


class _Recording:
    """An engine that keeps the outputs of its last call (the dry run compares them with model.yaml)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.outputs: dict = {}

    def infer(self, feeds: dict) -> dict:
        self.outputs = self.engine.infer(feeds)
        return self.outputs


def _output_shape_problems(part: str, graph, outputs: dict) -> list[str]:
    """Outputs whose real shape differs from model.yaml in a fixed dim (or in rank)."""
    problems = []
    for t in graph.outputs:
        got = outputs.get(t.name)
        if got is None:
            problems.append(f"{part} output {t.name!r}: declared in model.yaml, not produced by the graph")
            continue
        shape = tuple(np.shape(got))
        if len(shape) != len(t.shape) or any(d is not None and d != g for d, g in zip(t.shape, shape)):
            problems.append(f"{part} output {t.name!r}: model.yaml says {list(t.shape)}, the graph produced "
                            f"{list(shape)} on the dry run")
    return problems


def nominal_state(cfg: RuntimeConfig, names: list[str]) -> np.ndarray:
    """The robot at rest: each joint at its home (else mid-range), gripper dims through their
    joint, a Cartesian pose from the robot's kinematic model at that joint state.

    Raises:
        ValueError: A name the robot cannot measure, or a pose without a kinematic model.
    """
    from vla_runtime.core.kinematics import kinematics_for
    from vla_runtime.core.measured_state import MeasuredState
    from vla_runtime.core.rotation import matrix_to_quaternion

    robot = cfg.robot
    measured = MeasuredState.for_robot(names, robot)
    q = {j.name: j.home if j.home is not None else sum(j.position) / 2 for j in robot.joints}
    measured.update_joints(tuple(q), np.array(list(q.values())))
    if measured.needs_pose:
        group = next(g for g in robot.groups.values() if g.controller == "cartesian_impedance")
        chain = kinematics_for(robot.name, group.joints)
        if chain is None:
            raise ValueError(f"robot {robot.name!r} has no kinematic model for the hand pose the model reads")
        pose = chain.forward([q[j] for j in chain.joints])
        measured.update_pose((*pose[:3, 3], *matrix_to_quaternion(pose[:3, :3])))
    if not measured.complete:
        raise ValueError(f"the robot cannot measure {measured.missing()}")
    return measured.values[measured.index(names)]


def dry_run_problems(cfg: RuntimeConfig, pkg) -> tuple[list[str], str]:
    """Run the slow and fast parts once on a nominal input, as the nodes would, and judge the chunk.

    The input: a mid-grey frame from every camera at its configured size, the config's instruction,
    the robot at its home pose. Refused: outputs whose shape differs from model.yaml in a fixed dim,
    a non-finite chunk, a first chunk that leaves a joint's limits (by more than
    ``safety.state_limit_tolerance``) or puts the hand outside the workspace box.

    Returns:
        (problems, a one-line summary of what the dry run saw).
    """
    from vla_runtime.core.policy import SlowStep, fast_step_for

    cams = {c.name: np.full((c.height, c.width, 3), 128, dtype=np.uint8) for c in cfg.cameras}
    if pkg.spec.schema_version >= 2:
        problems, chunk, what = _dry_run_v2(cfg, pkg, cams)
        if chunk is None:
            return problems, ""
        more, hand = _chunk_problems(cfg, list(pkg.action_space.dim_names), chunk)
        return problems + more, what + (", hand inside the workspace" if hand is not None and not more else "")
    slow_engine, fast_engine = _Recording(pkg.slow_engine), _Recording(pkg.fast_engine)
    try:
        slow = SlowStep(pkg.spec, slow_engine, pkg.tokenizer, [c.name for c in cfg.cameras])
        latent = slow.run(cams, cfg.instruction).latent
    except (KeyError, ValueError) as e:
        return [f"dry run: the slow part cannot run on the config's cameras: {e}"], ""
    problems = _output_shape_problems("slow", pkg.spec.slow, slow_engine.outputs)
    try:  # the fast node's own step (one-shot, or a flow head the runtime samples)
        fast = fast_step_for(pkg, fast_engine, use_prefix=cfg.scheduler.rtc_prefix,
                             max_guidance=cfg.scheduler.rtc_max_guidance,
                             jacobian=cfg.scheduler.rtc_jacobian)
        state = nominal_state(cfg, list(fast.state_layout))
    except ValueError as e:
        return problems + [f"dry run: {e}"], ""
    try:
        chunk = fast.run(state, None, latent).chunk
    except ValueError as e:
        return problems + _output_shape_problems("fast", pkg.spec.fast, fast_engine.outputs) + [f"dry run: {e}"], ""
    problems += _output_shape_problems("fast", pkg.spec.fast, fast_engine.outputs)
    more, hand = _chunk_problems(cfg, list(pkg.action_space.dim_names), chunk)
    span = np.ptp(chunk, axis=0).max() if len(chunk) else 0.0
    summary = (f"dry run: home pose + grey frames + {cfg.instruction!r} → chunk {list(chunk.shape)}, "
               f"largest motion in a dim {span:.3g}" + (", hand inside the workspace" if hand is not None else ""))
    return problems + more, summary


def _dry_run_v2(cfg: RuntimeConfig, pkg, cams: dict) -> tuple[list[str], np.ndarray | None, str]:
    """The dry run of a schema-2 package: slow + fast once through :class:`PolicyRunner` (seeded noise), and
    the fast node's own step (``fast_step_for``) once on the same latent and frames.

    Every camera the package takes must be configured; one of another size is named in the summary
    (its frames are centre-cropped to the package's aspect ratio and resized bilinearly).
    """
    from vla_runtime.core.policy import PolicyRunner, fast_step_for

    spec = pkg.spec
    missing = [c.name for c in spec.cameras if c.name not in cams]
    if missing:
        return [f"cameras: the model package takes cameras {[c.name for c in spec.cameras]}; {missing} "
                f"{'is' if len(missing) == 1 else 'are'} not configured (cameras[].name)"], None, ""
    try:
        state = nominal_state(cfg, list(spec.proprio.names))
        runner = PolicyRunner(pkg, [c.name for c in cfg.cameras], seed=0)
        out = runner.infer(cams, cfg.instruction, state)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        return [f"dry run: {msg}"], None, ""
    try:  # the fast node's own step (action_chunk_node) on the same observation and latent
        node_step = fast_step_for(pkg, use_prefix=cfg.scheduler.rtc_prefix, max_guidance=cfg.scheduler.rtc_max_guidance,
                                  camera_names=[c.name for c in cfg.cameras], instruction=cfg.instruction,
                                  jacobian=cfg.scheduler.rtc_jacobian)
        node_step.run(state, None, out.latent or None, 0, cams)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        return [f"dry run: the fast node cannot run this package: {msg}"], None, ""
    chunk = out.actions
    span = np.ptp(chunk, axis=0).max() if len(chunk) else 0.0
    fitted = ""
    if out.resized:
        sizes = {c.name: (c.height, c.width) for c in spec.cameras}
        fitted = "; " + ", ".join(f"camera {c!r} is fitted to the package's {sizes[c][0]}x{sizes[c][1]} (centre "
                                  "crop + bilinear resize)" for c in out.resized)
    what = (f"dry run: home pose + grey frames + {cfg.instruction!r} → chunk {list(chunk.shape)} "
            f"({spec.fast.kind}, {out.fast_calls} fast call(s), slow {out.slow_ms:.1f} ms, fast {out.fast_ms:.1f} ms), "
            f"largest motion in a dim {span:.3g}{fitted}")
    return [], chunk, what


def _chunk_problems(cfg: RuntimeConfig, dims: list[str], chunk: np.ndarray) -> tuple[list[str], np.ndarray | None]:
    """A first chunk that leaves a joint's limits or puts the hand outside the workspace box.

    Returns:
        (problems, the hand positions checked against the box, or None where none could be).
    """
    from vla_runtime.core.kinematics import kinematics_for

    problems: list[str] = []
    tol = cfg.safety.state_limit_tolerance
    for j in cfg.robot.joints:
        if j.name in dims:
            col = chunk[:, dims.index(j.name)]
            lo, hi = j.position
            if col.min() < lo - tol or col.max() > hi + tol:
                problems.append(f"dry run: the first chunk takes {j.name} to [{col.min():.4g}, {col.max():.4g}], "
                                f"outside its limits [{lo}, {hi}]")
    box = cfg.robot.workspace
    hand = None
    if box is not None:
        arm = next((g for g in cfg.robot.groups.values() if g.ee_link and all(j in dims for j in g.joints)), None)
        chain = kinematics_for(cfg.robot.name, arm.joints) if arm is not None else None
        if chain is not None:
            hand = np.array([chain.forward(row[[dims.index(j) for j in chain.joints]])[:3, 3] for row in chunk])
        else:
            cart = next((g for g in cfg.robot.groups if f"{g}/x" in dims), None)
            if cart is not None:
                hand = chunk[:, [dims.index(f"{cart}/{k}") for k in "xyz"]]
        if hand is not None:
            out = (hand < np.array(box.min)) | (hand > np.array(box.max))
            if out.any():
                k = int(np.argmax(out.any(axis=1)))
                problems.append(f"dry run: the first chunk puts the hand at {np.round(hand[k], 3).tolist()} "
                                f"(step {k}), outside the workspace {list(box.min)}..{list(box.max)}")
    return problems, hand


def check_config(path: str, load_models: bool = True) -> CheckReport:
    """Validate a config file and (optionally) load and verify its model package."""
    report = CheckReport(source=str(path))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        report.problems.extend(e.problems)
        return report
    report.verified.append(f"config: robot {cfg.robot.name!r}, {len(cfg.robot.joints)} joints, "
                           f"groups {sorted(cfg.robot.groups)}")
    report.problems.extend(curve_key_problems(cfg))
    if not load_models:
        return report
    pkg_path = cfg.model_package_path
    if not pkg_path.is_dir():
        report.problems.append(f"model.package = {cfg.model.package!r}: no such directory ({pkg_path})")
        return report
    from vla_runtime.engines.base import EngineError
    from vla_runtime.engines.model_package import ModelPackageError, load_model_package

    try:
        pkg = load_model_package(pkg_path, slow=cfg.model.slow_engine, fast=cfg.model.fast_engine)
    except (ModelPackageError, EngineError) as e:
        report.problems.append(f"model.package = {cfg.model.package!r}: {e}")
        return report
    report.verified.append(f"model package {pkg.spec.name!r}: graphs match model.yaml, engines load "
                           f"({cfg.model.slow_engine.backend}/{cfg.model.slow_engine.provider}, "
                           f"{cfg.model.fast_engine.backend}/{cfg.model.fast_engine.provider})")
    report.problems.extend(model_robot_problems(cfg, list(pkg.action_space.dim_names)))
    report.problems.extend(normalization_problems(cfg, pkg.spec))
    chunk_s = pkg.spec.chunk_horizon / pkg.spec.control_rate_hz
    if chunk_s < 2.0 / cfg.rates.fast_hz:
        report.problems.append(f"model chunk_horizon {pkg.spec.chunk_horizon} at {pkg.spec.control_rate_hz:g} Hz lasts "
                               f"{chunk_s * 1e3:.3g} ms, less than two fast-loop periods at rates.fast_hz = "
                               f"{cfg.rates.fast_hz:g}: every plan would run out before the next chunk")
    if not report.problems:  # the dry run needs a package that fits the robot
        dry, summary = dry_run_problems(cfg, pkg)
        report.problems.extend(dry)
        if summary and not dry:
            report.verified.append(summary)
    if "failure_detector" in cfg.nodes:
        from vla_runtime.core.failure_detection import load_for_config

        try:
            _det, status = load_for_config(cfg.detector.learned, cfg.detector_path)
            report.verified.append(f"failure detector: {status}")
        except ValueError as e:
            report.problems.append(f"detector: {e} (set detector.learned: off to run the hard monitors only)")
    return report

"""``vla-runtime check``: validate a config and every model package it names, before any robot moves."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_runtime.core.config import ConfigError, RuntimeConfig, load_config
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
        allowed = {
            "cartesian_impedance": {"x", "y", "z", "qx", "qy", "qz", "qw", "rx", "ry", "rz"},
            "gripper": {"gripper"},
            "base_twist": {"vx", "vy", "wz"},
        }.get(g.controller, set())
        if comp.startswith("stiffness") and g.stiffness_limits is not None:
            continue
        if comp not in allowed:
            problems.append(
                f"model action dim {dim!r} cannot drive group {group!r} ({g.controller} controller)"
            )
    commanded_joints = {d for d in dim_names if "/" not in d}
    for gname, g in cfg.robot.groups.items():
        if g.controller in ("joint_trajectory", "forward_position", "forward_velocity", "joint_impedance"):
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
        if norm.kind == "none":
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
            elif norm.kind == "min_max":
                a, b = norm.min[i], norm.max[i]
                if a < lo - slack or b > hi + slack:
                    problems.append(f"{what}.normalization min/max[{i}] ({name}) = [{a}, {b}] exceeds its range "
                                    f"[{lo}, {hi}]")
    return problems


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
    if "failure_detector" in cfg.nodes:
        from vla_runtime.core.failure_detection import load_for_config

        try:
            _det, status = load_for_config(cfg.detector.learned, cfg.detector_path)
            report.verified.append(f"failure detector: {status}")
        except ValueError as e:
            report.problems.append(f"detector: {e} (set detector.learned: off to run the hard monitors only)")
    return report

"""``vla-runtime check``: validate a config and every model package it names, before any robot moves."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_runtime.core.config import ConfigError, RuntimeConfig, load_config


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
    return report

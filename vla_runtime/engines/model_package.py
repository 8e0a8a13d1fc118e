"""Load a model package (``models/<name>/``) and check ``model.yaml`` against its ONNX graphs.

The check is strict where a mismatch would only show up on the robot:

* every declared input and output exists in the graph,
* every graph input is declared (ONNX Runtime requires all of them),
* ranks agree; a declared fixed dim equals the graph's fixed dim; a dim the
  YAML declares dynamic (``null``) is dynamic in the graph. A graph's dynamic
  dim may be declared fixed (the package pins it, e.g. batch 1),
* dtypes agree.

A flow-matching fast part that exports a guidance VJP can also have that VJP checked numerically
against its own velocity (:func:`check_flow_vjp`; :func:`validate_package` does it): a wrong VJP
would not fail any shape check, it would steer real-time-chunking guidance the wrong way.

Every failure is a :class:`ModelPackageError` naming the tensor, the file and
the mismatch; an unreadable ONNX file is refused with its path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_runtime.core.action_space import ActionSpace, ProprioNormalizer
from vla_runtime.core.model_spec import GraphSpec, ModelSpec, TensorSpec, load_model_spec
from vla_runtime.core.text import HfTokenizer, InstructionTokenizer, make_tokenizer
from vla_runtime.engines import engine_from_config
from vla_runtime.engines.base import Engine, EngineConfig, EngineError, TensorInfo, coerce_engine_config

PARTS = ("slow", "fast")


class ModelPackageError(ValueError):
    """A model package is malformed or disagrees with its ONNX graphs."""


@dataclass
class ModelPackage:
    """A loaded, checked model package.

    Attributes:
        path: Package directory.
        spec: The validated ``model.yaml``.
        slow_engine: Engine for the slow graph (None if not loaded, or the package has no slow part).
        fast_engine: Engine for the fast graph (None if not loaded).
        action_space: Decoder for the fast graph's output.
        tokenizer: Instruction tokenizer (a word list, or the policy's own ``tokenizer.json``); None when no
            graph takes instruction tokens.
        proprio: Proprio normaliser for the model's state inputs.
        slow_onnx: Resolved path of the slow graph (None without a slow part).
        fast_onnx: Resolved path of the fast graph.
    """

    path: Path
    spec: ModelSpec
    slow_engine: Engine | None
    fast_engine: Engine | None
    action_space: ActionSpace
    tokenizer: InstructionTokenizer | None
    proprio: ProprioNormalizer
    slow_onnx: Path | None
    fast_onnx: Path
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Release both engines."""
        for e in (self.slow_engine, self.fast_engine):
            if e is not None:
                e.close()
        self._closed = True

    def __enter__(self) -> ModelPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_onnx(package_dir: Path, rel: str) -> Path:
    """Resolve a graph path from ``model.yaml`` relative to the package directory.

    Raises:
        ModelPackageError: The path is absolute or leaves the package directory.
    """
    p = Path(rel)
    if p.is_absolute():
        raise ModelPackageError(f"{package_dir / 'model.yaml'}: onnx path must be relative to the package, got {rel!r}")
    # normpath, not resolve(): symlinked graphs (colcon --symlink-install) are fine, '..' is not.
    base = Path(os.path.normpath(package_dir.absolute()))
    full = Path(os.path.normpath(base / p))
    if base not in full.parents:
        raise ModelPackageError(f"{package_dir / 'model.yaml'}: onnx path {rel!r} leaves the package directory")
    return full


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def _tensor_problems(kind: str, d: TensorSpec, g: TensorInfo) -> list[str]:
    problems = []
    if np.dtype(d.dtype) != g.dtype:
        problems.append(f"{kind} {d.name!r}: model.yaml says dtype {d.dtype}, graph has {g.dtype.name}")
    if len(d.shape) != len(g.shape):
        problems.append(f"{kind} {d.name!r}: model.yaml says shape {_fmt(d.shape)} (rank {len(d.shape)}), graph has "
                        f"{_fmt(g.shape)} (rank {len(g.shape)})")
        return problems
    for i, (dd, gd) in enumerate(zip(d.shape, g.shape)):
        if dd is None and gd is not None:
            problems.append(f"{kind} {d.name!r}: model.yaml says dim {i} is dynamic (shape {_fmt(d.shape)}), graph "
                            f"fixes it to {gd} ({_fmt(g.shape)})")
        elif dd is not None and gd is not None and dd != gd:
            problems.append(f"{kind} {d.name!r}: model.yaml says shape {_fmt(d.shape)}, graph has {_fmt(g.shape)} (dim "
                            f"{i}: {dd} vs {gd})")
    return problems


def check_graph_io(
    declared: GraphSpec,
    graph_inputs: Sequence[TensorInfo],
    graph_outputs: Sequence[TensorInfo],
    onnx_path: Path,
) -> None:
    """Check one graph's declared I/O against what the ONNX file really has.

    Raises:
        ModelPackageError: Listing every mismatch, each naming its tensor, plus the file.
    """
    problems: list[str] = []
    gin = {t.name: t for t in graph_inputs}
    gout = {t.name: t for t in graph_outputs}
    for d in declared.inputs:
        g = gin.get(d.name)
        if g is None:
            problems.append(f"input {d.name!r} is declared in model.yaml but the graph has no such input (graph "
                            f"inputs: {list(gin)})")
        else:
            problems += _tensor_problems("input", d, g)
    declared_in = {d.name for d in declared.inputs}
    for name, g in gin.items():
        if name not in declared_in:
            problems.append(f"input {name!r} ({_fmt(g.shape)} {g.dtype.name}) is required by the graph but not "
                            "declared in model.yaml")
    for d in declared.outputs:
        g = gout.get(d.name)
        if g is None:
            problems.append(f"output {d.name!r} is declared in model.yaml but the graph has no such output (graph "
                            f"outputs: {list(gout)})")
        else:
            problems += _tensor_problems("output", d, g)
    if problems:
        raise ModelPackageError(f"{onnx_path}: model.yaml disagrees with the graph:\n  - " + "\n  - ".join(problems))


def _graph_io(onnx_path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    import onnxruntime as ort

    from vla_runtime.engines.onnx_engine import open_session, ort_tensor_info

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = open_session(onnx_path, ["CPUExecutionProvider"], opts)
    except EngineError as e:
        raise ModelPackageError(str(e)) from e
    where = str(onnx_path)
    return [ort_tensor_info(a, where) for a in sess.get_inputs()], [ort_tensor_info(a,
                                                                                    where) for a in sess.get_outputs()]


def check_flow_vjp(engine: Engine, spec: ModelSpec, seed: int = 0, eps: float = 1e-2, rtol: float = 1e-2) -> float:
    """Check a flow-matching graph's ``guidance_vjp`` against a finite difference of its own velocity.

    For random noisy chunks ``x``, cotangents ``c`` and directions ``u`` (latent and proprio random
    too, package time at mid-flow), ``c · (v(x + εu) − v(x − εu)) / 2ε`` must equal ``vjp(c) · u``.

    Args:
        engine: The fast graph's engine.
        spec: Its package spec (``fast.kind: flow_matching`` with a guidance VJP).
        seed: Seed of the random probes.
        eps: Finite-difference step (model space).
        rtol: Largest accepted error, relative to the larger of the two sides' scale.

    Returns:
        The worst relative error over three probes.

    Raises:
        ModelPackageError: The part is not a flow graph with a VJP, or the VJP disagrees (both
            values are in the message).
    """
    from vla_runtime.core.flow import FlowHead

    if not spec.fast.is_flow:
        raise ModelPackageError(f"package {spec.name!r}: fast part is kind {spec.fast.kind!r}, not flow_matching")
    try:
        head = FlowHead(spec, engine.infer)
    except ValueError as e:
        raise ModelPackageError(f"package {spec.name!r}: {e}") from e
    if not head.has_vjp:
        raise ModelPackageError(f"package {spec.name!r}: the fast graph exports no guidance VJP to check")
    rng = np.random.default_rng(seed)
    t = head.sampler.model_time(0.5)
    dtype = head.latent.dtype
    worst = 0.0
    for _ in range(3):
        head.set_latent(rng.standard_normal(head.latent.shape).astype(dtype))
        head.set_proprio(rng.standard_normal(head.proprio.shape).astype(dtype))
        x, c, u = (rng.standard_normal(head.sampler.shape).astype(dtype) for _ in range(3))
        fd = float(np.sum(c * (head.velocity(x + eps * u, t) - head.velocity(x - eps * u, t)))) / (2 * eps)
        ad = float(np.sum(head.vjp(x, t, c) * u))
        err = abs(fd - ad) / max(abs(fd), abs(ad), 1e-6)
        worst = max(worst, err)
        if err > rtol:
            raise ModelPackageError(
                f"package {spec.name!r}: guidance_vjp disagrees with the velocity's finite difference: c·J·u = "
                f"{ad:.6g} from the VJP, {fd:.6g} from v(x ± {eps:g}u) (relative error {err:.2g} > {rtol:g})")
    return worst


def _declared_io(g: GraphSpec) -> tuple[list[TensorInfo], list[TensorInfo]]:
    conv = [[TensorInfo(t.name, tuple(t.shape), np.dtype(t.dtype)) for t in ts] for ts in (g.inputs, g.outputs)]
    return conv[0], conv[1]


def _load_spec(package_dir: Path) -> ModelSpec:
    try:
        return load_model_spec(package_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ModelPackageError(str(e)) from e


def validate_package(path: str | Path, parts: Iterable[str] = PARTS) -> ModelSpec:
    """Check a package without building engines (opens the graphs on CPU, metadata only).

    A flow-matching fast part with a guidance VJP is also run a few times on CPU: its VJP must match
    a finite difference of its velocity (:func:`check_flow_vjp`).

    Args:
        path: Package directory (or its ``model.yaml``).
        parts: Which graphs to check.

    Returns:
        The validated spec.

    Raises:
        ModelPackageError: Naming the file and every mismatching tensor.
    """
    package_dir = _package_dir(path)
    spec = _load_spec(package_dir)
    _package_tokenizer(spec, package_dir)
    for part in _present_parts(spec, _parts(parts), package_dir):
        graph: GraphSpec = getattr(spec, part)
        onnx_path = resolve_onnx(package_dir, graph.onnx)
        check_graph_io(graph, *_graph_io(onnx_path), onnx_path)
        if part == "fast" and spec.fast.is_flow and spec.fast.output_by_role("guidance_vjp") is not None:
            with engine_from_config(onnx_path, EngineConfig()) as eng:
                check_flow_vjp(eng, spec)
    return spec


def _package_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name.endswith((".yaml", ".yml")):
        p = p.parent
    if not p.is_dir():
        raise ModelPackageError(f"model package directory not found: {p}")
    return p


def _parts(parts: Iterable[str]) -> tuple[str, ...]:
    out = tuple(parts)
    bad = [p for p in out if p not in PARTS]
    if bad:
        raise ModelPackageError(f"unknown package part(s) {bad}; parts are {list(PARTS)}")
    return out


def _present_parts(spec: ModelSpec, wanted: tuple[str, ...], package_dir: Path) -> tuple[str, ...]:
    """The wanted parts the package has; asking only for parts it lacks is an error."""
    present = tuple(p for p in wanted if p in spec.parts)
    if wanted and not present:
        raise ModelPackageError(f"{package_dir / 'model.yaml'}: the package has no {' or '.join(wanted)} part (its "
                                f"parts: {list(spec.parts)}; a package without a slow part feeds the cameras to its "
                                "fast part)")
    return present


def _package_tokenizer(spec: ModelSpec, package_dir: Path) -> InstructionTokenizer | None:
    """The package's tokenizer, its file checked (an hf_tokenizers file must exist and load)."""
    if spec.tokenizer is None:
        return None
    try:
        tok = make_tokenizer(spec.tokenizer, package_dir)
    except ValueError as e:
        raise ModelPackageError(f"{package_dir / 'model.yaml'}: tokenizer: {e}") from e
    if isinstance(tok, HfTokenizer) and tok.pad_id >= tok.vocab_size:
        raise ModelPackageError(f"{package_dir / 'model.yaml'}: tokenizer.pad_id = {tok.pad_id} is outside the "
                                f"vocabulary of {tok.path.name} ({tok.vocab_size} tokens)")
    return tok


def _remote_engine(spec: ModelSpec, part: str, cfg: EngineConfig, package_dir: Path) -> Engine:
    """An ``openpi_remote`` fast part: the whole policy on a server, checked against what the package says.

    The package (its ``model.yaml``) still describes the policy here: cameras, state names, the action
    layout and chunk. A ``vla-runtime serve`` server says the same in its metadata; a mismatch is refused.
    """
    if part != "fast":
        raise ModelPackageError(f"backend 'openpi_remote' runs a whole policy (observation → actions): it can be the "
                                f"fast part only, not the {part} part")
    eng = engine_from_config(package_dir / "model.yaml", cfg)
    md = getattr(eng, "metadata", {})
    problems = []
    shape = md.get("action_shape")
    if shape is not None and list(shape) != [spec.chunk_horizon, spec.action_dim]:
        problems.append(f"the server's actions are {list(shape)}, the package's chunk is "
                        f"[{spec.chunk_horizon}, {spec.action_dim}]")
    names = md.get("state_names")
    if names is not None and list(names) != list(spec.proprio.names):
        problems.append(f"the server takes state {list(names)}, the package's proprio.names are "
                        f"{list(spec.proprio.names)}")
    cams = md.get("cameras")
    if isinstance(cams, dict) and spec.cameras and sorted(cams) != sorted(c.name for c in spec.cameras):
        problems.append(f"the server takes cameras {sorted(cams)}, the package describes "
                        f"{sorted(c.name for c in spec.cameras)}")
    if problems:
        eng.close()
        raise ModelPackageError(f"openpi_remote {cfg.url} does not serve the policy {package_dir / 'model.yaml'} "
                                "describes: " + "; ".join(problems))
    return eng


def load_model_package(
    path: str | Path,
    engine: EngineConfig | None = None,
    *,
    slow: EngineConfig | None = None,
    fast: EngineConfig | None = None,
    parts: Iterable[str] = PARTS,
) -> ModelPackage:
    """Load ``models/<name>/``: validate ``model.yaml``, check it against the graphs, build engines.

    Args:
        path: Package directory (or its ``model.yaml``).
        engine: Engine settings for both graphs (default: ONNX Runtime on CPU). Anything
            :func:`coerce_engine_config` accepts (a mapping or a config model with the same fields).
        slow: Override for the slow graph.
        fast: Override for the fast graph.
        parts: Which graphs to check and load (e.g. ``("fast",)`` in the action
            node); an unloaded part's engine is None. Parts the package does not have are skipped
            (a package without a slow part); asking only for those is an error.

    Returns:
        The package with engines, action space, tokenizer and proprio normaliser.

    Raises:
        ModelPackageError: The YAML is invalid or disagrees with a graph, or a
            graph file is missing/corrupt (its path is in the message).
        EngineError: The requested backend/provider cannot be had.
    """
    package_dir = _package_dir(path)
    spec = _load_spec(package_dir)
    wanted = _present_parts(spec, _parts(parts), package_dir)
    tokenizer = _package_tokenizer(spec, package_dir)
    base = coerce_engine_config(engine)
    configs = {
        "slow": coerce_engine_config(slow) if slow is not None else base,
        "fast": coerce_engine_config(fast) if fast is not None else base,
    }
    onnx_paths: dict[str, Path | None] = {p: resolve_onnx(package_dir, getattr(spec, p).onnx) if p in spec.parts
                                          else None for p in PARTS}
    engines: dict[str, Engine | None] = {"slow": None, "fast": None}
    try:
        for part in wanted:
            graph: GraphSpec = getattr(spec, part)
            onnx_path, cfg = onnx_paths[part], configs[part]
            assert onnx_path is not None
            if cfg.backend == "openpi_remote":
                engines[part] = _remote_engine(spec, part, cfg, package_dir)
                continue
            if not onnx_path.is_file():
                raise ModelPackageError(f"ONNX file not found: {onnx_path} (declared as {part}.onnx in "
                                        f"{package_dir / 'model.yaml'})")
            if cfg.backend == "onnxruntime":
                try:
                    eng = engine_from_config(onnx_path, cfg)
                except EngineError as e:
                    if "cannot load ONNX file" in str(e):
                        raise ModelPackageError(str(e)) from e
                    raise
                check_graph_io(graph, eng.input_specs, eng.output_specs, onnx_path)
            else:
                check_graph_io(graph, *_graph_io(onnx_path), onnx_path)
                eng = engine_from_config(onnx_path, cfg, io=_declared_io(graph))
            engines[part] = eng
    except BaseException:
        for e in engines.values():
            if e is not None:
                e.close()
        raise
    return ModelPackage(
        path=package_dir,
        spec=spec,
        slow_engine=engines["slow"],
        fast_engine=engines["fast"],
        action_space=ActionSpace.from_model_spec(spec),
        tokenizer=tokenizer,
        proprio=ProprioNormalizer(spec.proprio),
        slow_onnx=onnx_paths["slow"],
        fast_onnx=onnx_paths["fast"],  # type: ignore[arg-type] - every package has a fast part
    )

"""``vla-runtime bench fuzz``: generated bad input against ``check`` and against the running graph.

Two parts, one JSON:

* **configs and model packages** (:func:`fuzz_configs`): generated mutations of a shipped config
  and of the trained reference package (absurd numbers, wrong types, missing and unknown fields,
  nodes twice, files that are not text or not YAML, limits over the datasheet, missing key files;
  non-finite or absurd normalisation statistics, shapes, dtypes and roles that disagree with the
  graphs, corrupt ONNX files, corrupt detector heads, broken vocabularies) go through
  :func:`~vla_runtime.commands.check.check_config` in this process. Each case is refused with a
  reason or passes every check including the dry run; an exception escaping ``check`` is a crash.
* **the running graph** (:func:`fuzz_graph`): see its docstring.

Every case is reproducible from its seed; the report lists cases per class, refusals, crashes
(with their traceback) and what was accepted.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

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


def bench_fuzz(config_cases: int = 120, seed: int = 0) -> dict:
    """The whole fuzz benchmark (see the module docstring) with its targets."""
    cfg = fuzz_configs(config_cases, seed)
    refused = sum(c["refused"] for c in cfg["per_class"].values())
    targets = {
        "config_model_cases_ge_100": cfg["cases"] >= 100,
        "config_model_no_crash": not cfg["crashes"],
    }
    return {"benchmark": "fuzz", "configs_and_packages": {**cfg, "refused": refused},
            "targets": targets, "passed": all(targets.values())}


__all__ = ["bench_fuzz", "fuzz_configs"]

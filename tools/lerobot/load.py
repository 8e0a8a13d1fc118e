"""Load a LeRobot ``save_pretrained`` folder (policy + pre/post-processors) offline."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tools.lerobot import tiny

SUPPORTED = ("act", "diffusion", "smolvla", "pi0", "pi05")


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: The checkpoint folder.
        policy_type: LeRobot's ``type`` (``pi0``, ``act`` ...).
        policy: The policy, in eval mode on CPU, float32.
        pre: The pre-processor pipeline (``policy_preprocessor.json``).
        post: The post-processor pipeline (``policy_postprocessor.json``).
        tokenizer_dir: Folder the prompt tokenizer was loaded from (VLAs), else None.
    """

    path: Path
    policy_type: str
    policy: Any
    pre: Any
    post: Any
    tokenizer_dir: Path | None

    def step(self, registry_name: str, which: str = "pre") -> Any | None:
        """The first processor step registered as ``registry_name`` (or None)."""
        pipe = self.pre if which == "pre" else self.post
        for s in pipe.steps:
            if getattr(s, "_registry_name", None) == registry_name or type(s).__name__ == registry_name:
                return s
        return None


def preprocessor_tokenizer_name(path: Path) -> str | None:
    """The tokenizer name the checkpoint's ``policy_preprocessor.json`` gives (None without a tokenizer step)."""
    cfg = json.loads((path / "policy_preprocessor.json").read_text(encoding="utf-8"))
    for s in cfg.get("steps", []):
        if s.get("registry_name") == "tokenizer_processor":
            return s.get("config", {}).get("tokenizer_name")
    return None


def resolve_tokenizer_dir(name: str, override: Path | None) -> Path:
    """Find the folder holding ``tokenizer.json`` for the tokenizer the preprocessor names.

    ``override`` wins; then ``name`` as a local folder; then the Hugging Face cache (offline).
    """
    if override is not None:
        if not (override / "tokenizer.json").is_file():
            raise FileNotFoundError(f"--tokenizer {override}: no tokenizer.json in it")
        return override
    if Path(name).is_dir():
        return Path(name)
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(name, local_files_only=True, allow_patterns=["tokenizer*", "special_tokens*"]))
    except Exception as e:
        raise FileNotFoundError(
            f"the preprocessor's tokenizer {name!r} is neither a local folder nor in the Hugging Face cache "
            f"({type(e).__name__}: {e}); pass --tokenizer DIR (a folder with its tokenizer.json)") from e
    if not (snap / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer {name!r} in the HF cache ({snap}) has no tokenizer.json")
    return snap


def load_checkpoint(path: Path, tokenizer_override: Path | None = None) -> Checkpoint:
    """Load policy and processors from a LeRobot checkpoint folder, with no network access.

    Raises:
        FileNotFoundError: a required file is missing.
        ValueError: the policy type is not one this importer supports.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    for f in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path}: not a LeRobot save_pretrained folder (missing {f})")
    ptype = json.loads((path / "config.json").read_text(encoding="utf-8")).get("type")
    if ptype not in SUPPORTED:
        hint = " (GR00T cannot be exported: see docs/lerobot-export.md)" if ptype and "groot" in ptype else ""
        raise ValueError(f"{path}: policy type {ptype!r} is not supported; expected one of {list(SUPPORTED)}{hint}")
    arch = tiny.load_tiny_arch(path)
    if arch is not None:
        tiny.apply(arch)

    import torch

    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    tok_name = preprocessor_tokenizer_name(path)
    tok_dir = resolve_tokenizer_dir(tok_name, tokenizer_override) if tok_name else None
    cfg = PreTrainedConfig.from_pretrained(str(path))
    cfg.device = "cpu"
    policy = get_policy_class(ptype).from_pretrained(str(path), config=cfg)
    policy.to("cpu").to(dtype=torch.float32).eval()  # bfloat16 checkpoints are exported (and verified) in float32
    overrides: dict[str, Any] = {"device_processor": {"device": "cpu"}}
    if tok_dir is not None:
        overrides["tokenizer_processor"] = {"tokenizer_name": str(tok_dir)}
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(path), preprocessor_overrides=overrides,
                                         postprocessor_overrides={"device_processor": {"device": "cpu"}})
    return Checkpoint(path=path, policy_type=ptype, policy=policy, pre=pre, post=post, tokenizer_dir=tok_dir)

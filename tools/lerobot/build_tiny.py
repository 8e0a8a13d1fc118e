"""Build tiny random-weight LeRobot checkpoints offline, laid out like a user's checkpoint folder.

For each policy type (``act``, ``diffusion``, ``smolvla``, ``pi0``, ``pi05``) this writes
``<out>/<type>/`` with LeRobot's ``save_pretrained`` files (``config.json``,
``model.safetensors``), the pre/post-processor pipelines (``policy_preprocessor.json``,
``policy_postprocessor.json`` and their state files) and, for the VLAs, the tokenizer (a small BPE
trained here with the ``tokenizers`` library; nothing is downloaded). Sizes are overridden through
:mod:`tools.lerobot.tiny`, recorded in ``tiny_arch.json``.

The robot is the simulated Panda: 8-D state (7 joints + gripper), 8-D joint-position actions,
cameras ``scene`` (and ``wrist`` for π0 and SmolVLA, to exercise several cameras) delivering
48x64 RGB frames, which the VLAs resize-with-pad to 32x32.

Usage (LeRobot environment only)::

    HF_HUB_OFFLINE=1 .venv-lerobot/bin/python -m tools.lerobot.build_tiny --out build/lerobot_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools.lerobot import tiny

# Build types: LeRobot policy types, plus ``diffusion_ddim`` (Diffusion with the DDIM scheduler; plain
# ``diffusion`` keeps LeRobot's default DDPM scheduler).
POLICY_TYPES = ("act", "diffusion", "diffusion_ddim", "smolvla", "pi0", "pi05")
STATE_DIM = 8
ACTION_DIM = 8
CAMERA_HW = (48, 64)
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper"]

# Text the tiny BPE tokenizers are trained on: the fixture prompts, the prompt formats' fixed words,
# digits (π0.5 writes the discretised state as numbers) and punctuation.
_CORPUS = [
    "pick up the red cube", "touch the green cube", "push the blue block to the left",
    "open the gripper", "close the gripper and lift", "place it in the bowl", "stack the cubes",
    "Task: pick up the red cube, State: 12 128 255 0 3 64 200 17;\nAction: ",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 100 127 128 129 200 250 255",
    "\n", ", ; : . ! ? - _",
]


def _cameras(policy_type: str) -> list[str]:
    return ["scene", "wrist"] if policy_type in ("pi0", "smolvla") else ["scene"]


def _dataset_stats(cameras: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Plausible per-dimension statistics for the Panda (every kind LeRobot normalises with)."""
    rng = np.random.default_rng(7)
    mean = np.array([0.0, 0.2, 0.0, -2.2, 0.0, 2.4, 0.75, 0.04])
    std = np.array([0.6, 0.5, 0.6, 0.5, 0.6, 0.5, 0.6, 0.02])
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key in ("observation.state", "action"):
        jitter = rng.uniform(-0.05, 0.05, STATE_DIM)
        m = mean + jitter
        stats[key] = {
            "mean": m, "std": std, "min": m - 2.5 * std, "max": m + 2.5 * std,
            "q01": m - 2.2 * std, "q99": m + 2.2 * std, "q10": m - 1.2 * std, "q90": m + 1.2 * std,
        }
    for cam in cameras:
        stats[f"observation.images.{cam}"] = {
            "mean": np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1),
            "std": np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1),
            "min": np.zeros((3, 1, 1)), "max": np.ones((3, 1, 1)),
        }
    return {k: {s: np.asarray(v, dtype=np.float32) for s, v in d.items()} for k, d in stats.items()}


def _features(cameras: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, *CAMERA_HW)) for c in cameras}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    return inputs, outputs


# --------------------------------------------------------------------------------------------------
# Tokenizers


def build_gemma_like_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A SentencePiece-style BPE (``▁`` for spaces, <bos> prepended) with PaliGemma's special ids.

    <pad>=0, <eos>=1, <bos>=2, <unk>=3, as in the PaliGemma tokenizer; the template adds <bos>
    and no <eos>, which is what LeRobot's π0/π0.5 prompts get from the real one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
    fast.save_pretrained(str(out_dir))


def build_smolvlm_like_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style, no template) with the special tokens SmolVLM's processor needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
                "<fake_token_around_image>", "<image>", "<global-img>", "<video>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|im_end|>", eos_token="<end_of_utterance>",
        bos_token="<|im_start|>", unk_token="<|endoftext|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                              "video_token": "<video>"},
    )


def build_smolvlm_backbone(out_dir: Path, image_size: int) -> None:
    """Write a tiny SmolVLM2 config + processor (tokenizer, image and video processors) to ``out_dir``."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    tokenizer = build_smolvlm_like_tokenizer(vocab_size=256)
    n = len(tokenizer)
    cfg = SmolVLMConfig(
        text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": n,
                     "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=n,
    )
    cfg.save_pretrained(str(out_dir))
    seq = (image_size // 8) ** 2 // 4
    proc = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(max_image_size={"longest_edge": image_size},
                                              size={"longest_edge": image_size}),
        tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(), image_seq_len=seq)
    proc.save_pretrained(str(out_dir))


class _TokenizerRedirect:
    """Context: LeRobot's ``AutoTokenizer.from_pretrained(name)`` loads ``name`` from a local folder."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def __enter__(self) -> _TokenizerRedirect:
        from lerobot.processor import tokenizer_processor as tp

        self._mod, self._orig = tp, tp.AutoTokenizer
        orig, mapping = tp.AutoTokenizer, self.mapping

        class _Redirect:
            @staticmethod
            def from_pretrained(name: str, *a: Any, **kw: Any) -> Any:
                return orig.from_pretrained(mapping.get(name, name), *a, **kw)

        tp.AutoTokenizer = _Redirect
        return self

    def __exit__(self, *exc: object) -> None:
        self._mod.AutoTokenizer = self._orig


# --------------------------------------------------------------------------------------------------
# Policies


def _arch_for(policy_type: str) -> tiny.TinyArch:
    if policy_type in ("pi0", "pi05"):
        return tiny.TinyArch(
            gemma={"gemma_2b": tiny.GemmaSize(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8),
                   "gemma_300m": tiny.GemmaSize(width=16, depth=2, mlp_dim=32, num_heads=8, num_kv_heads=1,
                                                head_dim=8)},
            vocab_size=128,
            vision={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                    "patch_size": 8},
        )
    return tiny.TinyArch()


def _make_config(policy_type: str, cameras: list[str], work: Path) -> Any:
    inputs, outputs = _features(cameras)
    common: dict[str, Any] = {"input_features": inputs, "output_features": outputs, "device": "cpu"}
    if policy_type == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        return ACTConfig(chunk_size=10, n_action_steps=5, vision_backbone="resnet_tiny",
                         pretrained_backbone_weights=None, dim_model=32, n_heads=4, dim_feedforward=64,
                         n_encoder_layers=2, n_decoder_layers=1, latent_dim=8, n_vae_encoder_layers=1, **common)
    if policy_type in ("diffusion", "diffusion_ddim"):
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        ddim = policy_type == "diffusion_ddim"
        return DiffusionConfig(n_obs_steps=2, horizon=16, n_action_steps=8, vision_backbone="resnet_tiny",
                               pretrained_backbone_weights=None, crop_shape=(40, 56), crop_is_random=True,
                               spatial_softmax_num_keypoints=8, down_dims=(16, 32), kernel_size=3, n_groups=4,
                               diffusion_step_embed_dim=16, num_train_timesteps=100,
                               num_inference_steps=10 if ddim else 20, noise_scheduler_type="DDIM" if ddim else "DDPM",
                               prediction_type="epsilon" if ddim else "sample", **common)
    if policy_type == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        backbone = work / "smolvlm_tiny"
        build_smolvlm_backbone(backbone, image_size=32)
        return SmolVLAConfig(chunk_size=10, n_action_steps=5, max_state_dim=12, max_action_dim=12,
                             resize_imgs_with_padding=(32, 32), tokenizer_max_length=24, num_steps=4,
                             vlm_model_name=str(backbone.resolve()), load_vlm_weights=False, num_vlm_layers=4,
                             num_expert_layers=2, self_attn_every_n_layers=2, expert_width_multiplier=0.5,
                             **common)
    if policy_type in ("pi0", "pi05"):
        if policy_type == "pi0":
            from lerobot.policies.pi0.configuration_pi0 import PI0Config as Cfg
        else:
            from lerobot.policies.pi05.configuration_pi05 import PI05Config as Cfg
        return Cfg(chunk_size=10, n_action_steps=5, max_state_dim=12, max_action_dim=12, image_resolution=(32, 32),
                   tokenizer_max_length=24 if policy_type == "pi0" else 48, num_inference_steps=4, **common)
    raise ValueError(f"unknown policy type {policy_type!r}; expected one of {list(POLICY_TYPES)}")


def build_one(policy_type: str, out_root: Path, seed: int = 0) -> Path:
    """Build, save and return the checkpoint folder of one tiny policy."""
    import torch

    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    out = out_root / policy_type
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    arch = _arch_for(policy_type)
    tiny.apply(arch)
    (out / tiny.TINY_ARCH_FILE).write_text(arch.to_json(), encoding="utf-8")

    cameras = _cameras(policy_type)
    redirect: dict[str, str] = {}
    if policy_type in ("pi0", "pi05"):
        tok_dir = out / "paligemma_tokenizer"
        build_gemma_like_tokenizer(tok_dir, vocab_size=arch.vocab_size)
        redirect[PALIGEMMA_TOKENIZER] = str(tok_dir.resolve())
    cfg = _make_config(policy_type, cameras, out)
    torch.manual_seed(seed)
    policy = get_policy_class(cfg.type)(cfg)
    _randomise_small_params(policy, seed)
    policy.eval()
    stats = _dataset_stats(cameras)
    with _TokenizerRedirect(redirect):
        pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(str(out))
    pre.save_pretrained(str(out))
    post.save_pretrained(str(out))
    (out / "build_info.json").write_text(json.dumps({
        "policy_type": policy_type, "seed": seed, "cameras": cameras, "camera_hw": list(CAMERA_HW),
        "state_names": PANDA_JOINTS, "tokenizer_redirect": {k: Path(v).name for k, v in redirect.items()},
    }, indent=2) + "\n", encoding="utf-8")
    return out


def _randomise_small_params(policy: Any, seed: int) -> None:
    """Give zero-initialised layers (biases, AdaRMS gates, action heads) small random values.

    Several LeRobot modules zero-initialise parameters; with them at zero a parity test could not
    tell whether the exported graph uses them.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in policy.parameters():
            if p.numel() and bool((p == 0).all()):
                p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder that receives one checkpoint per policy type")
    ap.add_argument("--only", nargs="*", choices=POLICY_TYPES, help="build only these types")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for t in args.only or POLICY_TYPES:
        t0 = time.monotonic()
        path = build_one(t, args.out)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"built {t}: {path} ({size / 1e6:.2f} MB) in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

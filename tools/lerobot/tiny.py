"""Size overrides that let LeRobot build *tiny* random-weight policies offline (test fixtures only).

LeRobot hard-codes parts of some architectures: π0/π0.5 take the Gemma widths/depths from the
variant name (``gemma_2b``, ``gemma_300m``), a 257152-token vocabulary and a 2048-wide SigLIP
projection; ACT and Diffusion take a torchvision ResNet by name (``resnet18`` is the smallest,
11M parameters). A fixture package must stay far below that, so the tiny builder

* registers :func:`resnet_tiny` as ``torchvision.models.resnet_tiny`` (a 4-stage BasicBlock
  ResNet with small widths; same child layout as torchvision's ResNet), and
* replaces, inside LeRobot's π0/π0.5 modules, the variant table and the two model classes with
  wrappers that shrink the configs they are handed (vocabulary, SigLIP width/depth/patch) before
  building LeRobot's own classes.

Every override is described by a :class:`TinyArch` that the builder writes as
``tiny_arch.json`` beside the checkpoint; the exporter applies the same overrides before it loads a
checkpoint that carries that file. A real user's checkpoint never has one, and then nothing here
runs. Runs only in the LeRobot environment (imports torch lazily).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

TINY_ARCH_FILE = "tiny_arch.json"


@dataclasses.dataclass(frozen=True)
class GemmaSize:
    """Sizes of one Gemma stack (the fields of LeRobot's ``GemmaConfig``)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class TinyArch:
    """The architecture overrides one tiny checkpoint was built with.

    Attributes:
        resnet_widths: Channel widths of the four ``resnet_tiny`` stages (ACT, Diffusion).
        gemma: Variant name -> sizes, replacing LeRobot's table (π0, π0.5).
        vocab_size: Vocabulary size of the PaliGemma language model and the action expert.
        vision: SigLIP overrides (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
            ``intermediate_size``, ``patch_size``); ``projection_dim`` is set to the VLM width.
    """

    resnet_widths: tuple[int, int, int, int] = (16, 16, 32, 32)
    gemma: dict[str, GemmaSize] = dataclasses.field(default_factory=dict)
    vocab_size: int = 0
    vision: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to the ``tiny_arch.json`` text."""
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TinyArch:
        """Parse ``tiny_arch.json`` text."""
        d = json.loads(text)
        gemma = {k: GemmaSize(**v) for k, v in d.get("gemma", {}).items()}
        return cls(
            resnet_widths=tuple(d.get("resnet_widths", (16, 16, 32, 32))),
            gemma=gemma,
            vocab_size=int(d.get("vocab_size", 0)),
            vision={k: int(v) for k, v in d.get("vision", {}).items()},
        )


def load_tiny_arch(checkpoint_dir: Path) -> TinyArch | None:
    """Return the overrides recorded beside a checkpoint, or None for a normal checkpoint."""
    p = Path(checkpoint_dir) / TINY_ARCH_FILE
    if not p.is_file():
        return None
    return TinyArch.from_json(p.read_text(encoding="utf-8"))


def resnet_tiny(*, widths: tuple[int, int, int, int], weights: Any = None,
                replace_stride_with_dilation: list[bool] | None = None, norm_layer: Any = None) -> Any:
    """A torchvision-style ResNet (BasicBlock, one block per stage) with the given stage widths.

    Children are ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc`` like torchvision's
    ``ResNet``, which is what ACT (``IntermediateLayerGetter`` on ``layer4``, ``fc.in_features``)
    and Diffusion (``children()[:-2]``) rely on.
    """
    import torch.nn as nn
    from torchvision.models.resnet import BasicBlock, conv1x1

    if weights is not None:
        raise ValueError(f"resnet_tiny has no pretrained weights, got weights={weights!r}")
    dil = replace_stride_with_dilation or [False, False, False]
    norm = norm_layer or nn.BatchNorm2d

    class _TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w0 = widths[0]
            self.conv1 = nn.Conv2d(3, w0, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = norm(w0)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            inplanes, dilation = w0, 1
            for i, planes in enumerate(widths):
                stride = 1 if i == 0 else 2
                if i > 0 and dil[i - 1]:
                    dilation *= stride
                    stride = 1
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(conv1x1(inplanes, planes, stride), norm(planes))
                block = BasicBlock(inplanes, planes, stride, down, norm_layer=norm, dilation=1 if i == 0 else dilation)
                setattr(self, f"layer{i + 1}", nn.Sequential(block))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(inplanes, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return _TinyResNet()


def apply(arch: TinyArch) -> None:
    """Install the overrides into torchvision and LeRobot's modules (idempotent)."""
    import torchvision

    def _factory(**kw: Any) -> Any:
        return resnet_tiny(widths=arch.resnet_widths, **kw)

    torchvision.models.resnet_tiny = _factory
    if arch.gemma:
        _patch_pi(arch)


def _patch_pi(arch: TinyArch) -> None:
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    for mod in (modeling_pi0, modeling_pi05):
        orig_cfg = getattr(mod, "_vla_orig_get_gemma_config", mod.get_gemma_config)
        orig_vlm = getattr(mod, "_vla_orig_paligemma_cls", mod.PaliGemmaForConditionalGenerationWithPiGemma)
        orig_exp = getattr(mod, "_vla_orig_expert_cls", mod.PiGemmaForCausalLM)
        mod._vla_orig_get_gemma_config = orig_cfg
        mod._vla_orig_paligemma_cls = orig_vlm
        mod._vla_orig_expert_cls = orig_exp
        gemma_cls = mod.GemmaConfig

        def get_cfg(variant: str, _gc=gemma_cls, _orig=orig_cfg) -> Any:
            if variant in arch.gemma:
                return _gc(**dataclasses.asdict(arch.gemma[variant]))
            return _orig(variant)

        def make_vlm(config: Any, _orig=orig_vlm) -> Any:
            config.text_config.vocab_size = arch.vocab_size
            config._vocab_size = arch.vocab_size
            config.image_token_index = arch.vocab_size - 1
            for k, v in arch.vision.items():
                setattr(config.vision_config, k, v)
            config.vision_config.projection_dim = config.text_config.hidden_size
            config.text_config.max_position_embeddings = 512
            return _orig(config=config)

        def make_expert(config: Any, _orig=orig_exp) -> Any:
            config.vocab_size = arch.vocab_size
            return _orig(config=config)

        mod.get_gemma_config = get_cfg
        mod.PaliGemmaForConditionalGenerationWithPiGemma = make_vlm
        mod.PiGemmaForCausalLM = make_expert

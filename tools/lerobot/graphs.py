"""torch modules that cut a LeRobot policy into the graphs of a model package (export time only).

Each wrapper calls the policy's own methods (``embed_prefix``, ``denoise_step``, the ACT model, the
Diffusion encoder and U-Net) between fixed tensor inputs and outputs, so that
``torch.onnx.export`` sees exactly LeRobot's computation. What every input and output means is
specified in ``docs/lerobot-export.md``; the conventions shared by all of them:

* camera frames enter as ``uint8 [1, H, W, 3]`` (RGB, the dataset's resolution) and the graph does
  what LeRobot does between the camera and the network: ``/255``, HWC->CHW, then the policy's own
  image preprocessing (resize-with-pad and [-1, 1] for the VLAs; the dataset mean/std for ACT and
  Diffusion; Diffusion's centre crop);
* state enters normalised (the runtime applies the package's normalisation) and unpadded; a graph
  that needs it padded pads it with zeros itself;
* masks are ``int64`` (1 = valid); flow time ``t`` is ``float32 [1]``; Diffusion's timestep is
  ``int64 [1]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ImageInput(nn.Module):
    """uint8 camera frames -> the float tensor the policy's ``batch[key]`` holds after the pre-processor.

    ``affine`` maps a camera key to ``(a, b)`` (shape ``[3]``): the pre-processor's visual
    normalisation written as ``(x - a) / b``; keys without an entry are passed through (identity).
    """

    def __init__(self, keys: list[str], affine: dict[str, tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.keys = list(keys)
        self.has = [k in affine for k in self.keys]
        for i, k in enumerate(self.keys):
            if k in affine:
                a, b = affine[k]
                self.register_buffer(f"a_{i}", a.reshape(3, 1, 1).to(torch.float32))
                self.register_buffer(f"b_{i}", b.reshape(3, 1, 1).to(torch.float32))

    def forward(self, i: int, frame: Tensor) -> Tensor:
        """Frame ``uint8 [..., H, W, 3]`` -> ``float32 [..., 3, H, W]``, normalised like the pre-processor."""
        x = frame.to(torch.float32) / 255
        x = x.movedim(-1, -3)
        if self.has[i]:
            x = (x - getattr(self, f"a_{i}")) / getattr(self, f"b_{i}")
        return x


def _pad_last(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] >= size:
        return x
    return torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def _cache_tensors(cache: Any) -> list[Tensor]:
    out: list[Tensor] = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


def _cache_from(kv: tuple[Tensor, ...]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for i in range(len(kv) // 2):
        cache.update(kv[2 * i], kv[2 * i + 1], i)
    return cache


# --------------------------------------------------------------------------------------------------
# π0 / π0.5 (PaliGemma + Gemma action expert) and SmolVLA (SmolVLM + expert)


class VlaPrefix(nn.Module):
    """Slow graph: camera frames + prompt tokens (+ state for SmolVLA) -> prefix K/V cache + pad mask.

    Inputs, in order: one ``uint8 [1, H, W, 3]`` per real camera (``policy.config.image_features``
    order, without ``empty_camera_<i>``), ``lang_tokens int64 [1, L]``, ``lang_mask int64 [1, L]``, and for SmolVLA
    ``state float32 [1, S]`` (normalised, unpadded). Outputs: ``past_key_<i>``, ``past_value_<i>``
    (``float32 [1, kv_heads, P, head_dim]``, post-RoPE) for every layer, then
    ``prefix_mask int64 [1, P]``.
    """

    def __init__(self, policy: Any, policy_type: str, image_input: ImageInput) -> None:
        super().__init__()
        self.policy = policy
        self.kind = policy_type
        self.keys = image_input.keys
        self.image_input = image_input

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        n = len(self.keys)
        frames, tokens, mask = args[:n], args[n], args[n + 1].to(torch.bool)
        batch = {k: self.image_input(i, f) for i, (k, f) in enumerate(zip(self.keys, frames))}
        m = self.policy.model
        if self.kind == "smolvla":
            images, img_masks = self.policy.prepare_images(batch)
            state = _pad_last(args[n + 2], self.policy.config.max_state_dim)
            embs, pad, att = m.embed_prefix(images, img_masks, tokens, mask, state=state)
            att2d = make_att_2d_masks(pad, att)
            pos = torch.cumsum(pad, dim=1) - 1
            _, cache = m.vlm_with_expert.forward(attention_mask=att2d, position_ids=pos, past_key_values=None,
                                                 inputs_embeds=[embs, None], use_cache=True)
        else:
            images, img_masks = self.policy._preprocess_images(batch)
            embs, pad, att = m.embed_prefix(images, img_masks, tokens, mask)
            att4d = prepare_attention_masks_4d(make_att_2d_masks(pad, att))
            pos = torch.cumsum(pad, dim=1) - 1
            m.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"
            _, cache = m.paligemma_with_expert.forward(attention_mask=att4d, position_ids=pos, past_key_values=None,
                                                       inputs_embeds=[embs, None], use_cache=True)
        return (*_cache_tensors(cache), pad.to(torch.int64))


class VlaVelocity(nn.Module):
    """Fast graph: ONE flow-matching velocity evaluation ``v_t = f(x_t, t, prefix)``.

    Inputs: ``x_t float32 [1, H, A_max]``, ``t float32 [1]``, for π0 ``state float32 [1, S]``
    (normalised, unpadded), then the K/V tensors and ``prefix_mask`` exactly as the slow graph
    outputs them. Output: ``v_t float32 [1, H, A_max]``.
    """

    def __init__(self, policy: Any, policy_type: str, n_layers: int) -> None:
        super().__init__()
        self.policy = policy
        self.kind = policy_type
        self.n_layers = n_layers

    def forward(self, *args: Tensor) -> Tensor:
        x_t, t = args[0], args[1]
        rest = args[2:]
        state = None
        if self.kind == "pi0":
            state, rest = _pad_last(rest[0], self.policy.config.max_state_dim), rest[1:]
        kv, prefix_mask = rest[: 2 * self.n_layers], rest[2 * self.n_layers].to(torch.bool)
        cache = _cache_from(kv)
        m = self.policy.model
        if self.kind == "pi0":
            return m.denoise_step(state=state, prefix_pad_masks=prefix_mask, past_key_values=cache, x_t=x_t,
                                  timestep=t)
        return m.denoise_step(prefix_pad_masks=prefix_mask, past_key_values=cache, x_t=x_t, timestep=t)


# --------------------------------------------------------------------------------------------------
# ACT


class ActPolicyGraph(nn.Module):
    """ACT in one graph: camera frames + normalised state -> normalised action chunk ``[1, chunk, A]``."""

    def __init__(self, policy: Any, image_input: ImageInput) -> None:
        super().__init__()
        self.policy = policy
        self.keys = image_input.keys
        self.image_input = image_input

    def forward(self, *args: Tensor) -> Tensor:
        from lerobot.utils.constants import OBS_IMAGES, OBS_STATE

        n = len(self.keys)
        images = [self.image_input(i, f) for i, f in enumerate(args[:n])]
        batch = {OBS_STATE: args[n], OBS_IMAGES: images}
        return self.policy.model(batch)[0]


# --------------------------------------------------------------------------------------------------
# Diffusion Policy


class DiffusionEncoder(nn.Module):
    """Observation encoder: frames ``uint8 [1, n_obs, H, W, 3]`` per camera + normalised state
    ``[1, n_obs, S]`` -> ``global_cond float32 [1, G]``."""

    def __init__(self, policy: Any, image_input: ImageInput) -> None:
        super().__init__()
        self.policy = policy
        self.keys = image_input.keys
        self.image_input = image_input

    def forward(self, *args: Tensor) -> Tensor:
        from lerobot.utils.constants import OBS_IMAGES, OBS_STATE

        n = len(self.keys)
        cams = [self.image_input(i, f) for i, f in enumerate(args[:n])]
        batch = {OBS_STATE: args[n], OBS_IMAGES: torch.stack(cams, dim=-4)}
        return self.policy.diffusion._prepare_global_conditioning(batch)


class DiffusionDenoiser(nn.Module):
    """ONE denoiser evaluation: ``(x_t [1, horizon, A], timestep int64 [1], global_cond [1, G]) -> model output``."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.unet = policy.diffusion.unet

    def forward(self, x_t: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        return self.unet(x_t, timestep, global_cond=global_cond)

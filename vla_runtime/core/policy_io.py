"""Build engine feeds from observations, by the roles the model package gives its tensors.

The slow graph takes camera image(s) and instruction token ids; the fast graph takes the latent,
the normalised proprioception and, when the package exposes them, the executing chunk's prefix
(RTC-style conditioning). Which tensor gets what is declared in ``model.yaml`` (``role:``), so
the nodes never hard-code tensor names. Pure numpy; buffers are preallocated once so the fast
path allocates nothing per tick beyond what the engine does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vla_runtime.core.model_spec import GraphSpec, ModelSpec, TensorSpec

Image = np.ndarray  # H×W×3 uint8, RGB


def _concrete(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(1 if d is None else int(d) for d in shape)


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an H×W×C image (no OpenCV needed on the robot side)."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    rows = (np.arange(height) * h // height).astype(np.intp)
    cols = (np.arange(width) * w // width).astype(np.intp)
    return img[rows[:, None], cols[None, :]]


def fit_frame(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """A camera frame at exactly the size a package's camera declares (uint8 H×W×3 RGB in and out).

    A frame of that size is returned as it is (the policy's own path: LeRobot feeds the frames the
    dataset was recorded at). A frame of another size is first cropped about its centre to the
    declared aspect ratio (never stretched), then resized bilinearly with half-pixel centres (as
    OpenCV's ``INTER_LINEAR`` and torch's ``align_corners=False``; no antialiasing), then rounded.
    This is a deviation from the trained input: configure the camera at the package's size where it can be.

    Raises:
        ValueError: The frame is not H×W×3 uint8, or the target size is not positive.
    """
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        got = f"{list(img.shape)} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"a camera frame must be an H×W×3 uint8 RGB array, got {got}")
    if height < 1 or width < 1:
        raise ValueError(f"target frame size must be positive, got {height}x{width}")
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    # Centre crop to the target aspect ratio.
    if h * width > w * height:
        ch, cw = max(1, round(w * height / width)), w
    else:
        ch, cw = h, max(1, round(h * width / height))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    src = img[y0:y0 + ch, x0:x0 + cw].astype(np.float32)

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        c = np.clip(c, 0.0, n_in - 1)
        i0 = np.floor(c).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (c - i0).astype(np.float32)

    r0, r1, fy = coords(height, ch)
    c0, c1, fx = coords(width, cw)
    top = src[r0][:, c0] * (1 - fx)[None, :, None] + src[r0][:, c1] * fx[None, :, None]
    bot = src[r1][:, c0] * (1 - fx)[None, :, None] + src[r1][:, c1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class SlowFeeds:
    """Feeds for the slow graph: images by camera + instruction ids/mask.

    Args:
        graph: The package's ``slow`` graph spec.
        camera_names: Camera names available at run time, in config order; an image input with
            ``camera: <name>`` takes that stream, one without takes cameras in order.
    """

    def __init__(self, graph: GraphSpec, camera_names: list[str]):
        self.image_inputs: list[tuple[TensorSpec, str]] = []
        free = list(camera_names)
        for t in graph.inputs:
            if t.role != "image":
                continue
            if t.camera is not None:
                if t.camera not in camera_names:
                    raise ValueError(
                        f"slow input {t.name!r} wants camera {t.camera!r}; configured cameras: {camera_names}"
                    )
                cam = t.camera
                if cam in free:
                    free.remove(cam)
            else:
                if not free:
                    raise ValueError(f"slow input {t.name!r} needs a camera; configured cameras: {camera_names}")
                cam = free.pop(0)
            self.image_inputs.append((t, cam))
        self.ids = graph.input_by_role("instruction_ids")
        self.mask = graph.input_by_role("instruction_mask")
        known = {"image", "instruction_ids", "instruction_mask"}
        other = [t.name for t in graph.inputs if t.role not in known]
        if other:
            raise ValueError(f"slow graph inputs with roles the runtime cannot feed: {other}")

    @property
    def cameras(self) -> list[str]:
        return [cam for _, cam in self.image_inputs]

    def image_tensor(self, spec: TensorSpec, img: Image) -> np.ndarray:
        """One camera frame → the tensor its input declares (size, layout, dtype, [0,1] floats)."""
        return image_tensor(spec, img)

    def build(self, images: Mapping[str, Image], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Feeds for one slow step."""
        feeds: dict[str, np.ndarray] = {}
        for spec, cam in self.image_inputs:
            if cam not in images:
                raise KeyError(f"no image from camera {cam!r} for input {spec.name!r}")
            feeds[spec.name] = self.image_tensor(spec, images[cam])
        if self.ids is not None:
            feeds[self.ids.name] = ids.astype(np.dtype(self.ids.dtype), copy=False)
        if self.mask is not None:
            feeds[self.mask.name] = mask.astype(np.dtype(self.mask.dtype), copy=False)
        return feeds


def image_tensor(spec: TensorSpec, img: Image) -> np.ndarray:
    """One camera frame → the tensor a schema-1 image input declares (nearest resize to its size, its
    layout and dtype; float inputs get [0, 1] values)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image for {spec.name!r} must be H×W×3, got shape {img.shape}")
    layout = spec.layout or "NCHW"
    shape = _concrete(spec.shape)
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    x = resize_nearest(img, h, w)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    x = x[None]
    if np.dtype(spec.dtype) == np.uint8:
        return np.ascontiguousarray(x, dtype=np.uint8)
    return np.ascontiguousarray(x, dtype=np.dtype(spec.dtype)) / np.asarray(255.0, dtype=spec.dtype)


class FastFeeds:
    """Preallocated feeds for the fast graph: latent, proprio, optional chunk prefix + mask.

    Args:
        spec: The model package spec.
    """

    def __init__(self, spec: ModelSpec):
        g = spec.fast
        self.latent_spec = g.input_by_role("latent")
        self.proprio_spec = g.input_by_role("proprio")
        if self.latent_spec is None or self.proprio_spec is None:
            raise ValueError("the fast graph needs inputs with roles 'latent' and 'proprio'")
        self.prefix_spec = g.input_by_role("prev_chunk")
        self.prefix_mask_spec = g.input_by_role("prefix_mask")
        self.actions_spec = g.output_by_role("actions") or g.outputs[0]
        known = {"latent", "proprio", "prev_chunk", "prefix_mask"}
        other = [t.name for t in g.inputs if t.role not in known]
        if other:
            raise ValueError(f"fast graph inputs with roles the runtime cannot feed: {other}")
        self.latent = np.zeros(_concrete(self.latent_spec.shape), dtype=self.latent_spec.dtype)
        self.proprio = np.zeros(_concrete(self.proprio_spec.shape), dtype=self.proprio_spec.dtype)
        self.feeds: dict[str, np.ndarray] = {self.latent_spec.name: self.latent, self.proprio_spec.name: self.proprio}
        self.prefix: np.ndarray | None = None
        self.prefix_mask: np.ndarray | None = None
        if self.prefix_spec is not None:
            self.prefix = np.zeros(_concrete(self.prefix_spec.shape), dtype=self.prefix_spec.dtype)
            self.feeds[self.prefix_spec.name] = self.prefix
        if self.prefix_mask_spec is not None:
            self.prefix_mask = np.zeros(_concrete(self.prefix_mask_spec.shape), dtype=self.prefix_mask_spec.dtype)
            self.feeds[self.prefix_mask_spec.name] = self.prefix_mask

    @property
    def latent_view(self) -> np.ndarray:
        """The K×D view of the latent feed, for ``LatentReader.read_into``."""
        return self.latent.reshape(self.latent.shape[-2:])

    @property
    def supports_prefix(self) -> bool:
        return self.prefix is not None

    def set_proprio(self, normalised: np.ndarray) -> None:
        self.proprio[...] = normalised.reshape(self.proprio.shape)

    def set_prefix(self, prefix_raw: np.ndarray | None, mask: np.ndarray | None) -> None:
        """Set the (model-space) prefix of the executing chunk; None clears it (mask all zero)."""
        if self.prefix is None:
            return
        if prefix_raw is None or mask is None:
            self.prefix[...] = 0
            if self.prefix_mask is not None:
                self.prefix_mask[...] = 0
            return
        self.prefix[...] = prefix_raw.reshape(self.prefix.shape)
        if self.prefix_mask is not None:
            self.prefix_mask[...] = mask.reshape(self.prefix_mask.shape)

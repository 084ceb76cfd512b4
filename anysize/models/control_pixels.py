"""The control image a network call sees: pure tensor code (crop, gather, index maps).

A ControlNet's control image is prepared once per latent canvas size as a (1, C, H·k, W·k) tensor,
``k`` control pixels per latent pixel (the VAE factor for pixel-space controls, 1 for the DiTs'
VAE-encoded ones). A network call on a plain window of that canvas gets the crop at the window's
place (:func:`crop`); a call on any other view of the canvas (a strided sub-grid, a subsampled
reference, a padded crop) describes, per latent pixel of its input, which canvas latent pixel it
came from (a :class:`ControlView`, -1 where it came from padding), and gets the k×k blocks of
those pixels, zeros for padding (:func:`gather`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..devices import upload
from ..lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .base import Window

torch = lazy_module("torch")


@dataclass(frozen=True, eq=False)
class ControlView:
    """Where the latent pixels of a network input come from: ``index`` (N, h, w) holds, for each
    sample and pixel, the flat position y·W + x in the latent ``canvas`` (H, W), or -1 (padding)."""

    canvas: tuple[int, int]
    index: Tensor

    def repeat(self, n: int) -> "ControlView":
        """The same view for n copies of the batch (the [negative; positive] halves of CFG)."""
        return self if n == 1 else ControlView(self.canvas, self.index.repeat(n, 1, 1))

    @staticmethod
    def cat(views: list["ControlView"]) -> "ControlView":
        return ControlView(views[0].canvas, torch.cat([v.index for v in views]))


def crop(image: Tensor, window: Window, k: int) -> Tensor:
    """(1, C, h·k, w·k): the window's part of a canvas control image; columns past the right border
    wrap around to the left (MultiDiffusion's circular windows)."""
    top, bottom = window.top * k, window.bottom * k
    left, right = window.left * k, window.right * k
    width = image.shape[-1]
    if right <= width:
        return image[..., top:bottom, left:right]
    return torch.cat([image[..., top:bottom, left:], image[..., top:bottom, : right - width]], dim=-1)


def gather(image: Tensor, view: ControlView, k: int) -> Tensor:
    """(N, C, h·k, w·k): the k×k block of the canvas control image under every pixel of the view."""
    _, c, hk, wk = image.shape
    h, w = hk // k, wk // k
    n, vh, vw = view.index.shape
    blocks = image[0].reshape(c, h, k, w, k).permute(1, 3, 0, 2, 4).reshape(h * w, c, k, k)
    idx = view.index.reshape(-1)
    picked = blocks.index_select(0, idx.clamp(min=0))
    picked = picked * (idx >= 0).to(picked.dtype)[:, None, None, None]  # padding sees no control
    return picked.reshape(n, vh, vw, c, k, k).permute(0, 3, 1, 4, 2, 5).reshape(n, c, vh * k, vw * k)


@functools.lru_cache(maxsize=512)
def _grid(canvas: tuple[int, int], top: int, left: int, stride: int, h: int, w: int, device) -> Tensor:
    rows = torch.arange(h) * stride + top
    cols = torch.arange(w) * stride + left
    inside = ((rows >= 0) & (rows < canvas[0]))[:, None] & ((cols >= 0) & (cols < canvas[1]))[None, :]
    flat = rows[:, None] * canvas[1] + cols[None, :]
    return upload(torch.where(inside, flat, torch.full_like(flat, -1)), device)


def grid_index(canvas: tuple[int, int], top: int, left: int, stride: int, h: int, w: int, device) -> Tensor:
    """(h, w) canvas positions of the grid top + stride·i, left + stride·j; -1 outside the canvas.
    Made and uploaded once per grid and device (the network call only reads it)."""
    return _grid(tuple(canvas), int(top), int(left), int(stride), int(h), int(w), torch.device(device))


def pad_index(index: Tensor, size: tuple[int, int], top: int, left: int) -> Tensor:
    """(N, H, W): (N, h, w) positions placed at (top, left) of a size-H×W frame of padding (-1)."""
    n, h, w = index.shape
    out = torch.full((n, *size), -1, dtype=index.dtype, device=index.device)
    out[:, top : top + h, left : left + w] = index
    return out


class FittingResidual:
    """A ControlNet residual that fits the U-Net feature it is added to: the U-Net adds it as
    ``feature + residual``, which (a plain tensor refusing this type) calls :meth:`__radd__`. The
    same size adds it as it is; a network patch that changed the feature size (HiDiffusion's
    RAU-Net) gets it area-averaged down, or nearest-upsampled, to that size."""

    __slots__ = ("residual",)

    def __init__(self, residual: Tensor):
        self.residual = residual

    def __radd__(self, feature: Tensor) -> Tensor:
        r = self.residual
        if r.shape[-2:] != feature.shape[-2:]:
            size = tuple(feature.shape[-2:])
            shrink = r.shape[-2] >= size[0] and r.shape[-1] >= size[1]
            r = (torch.nn.functional.adaptive_avg_pool2d(r, size) if shrink
                 else torch.nn.functional.interpolate(r, size=size, mode="nearest"))
        return feature + r

"""Shared by the tiled methods: run the network on windows of the canvas and fuse the outputs.

An :class:`ImageWindow` is (image index, :class:`~anysize.models.base.Window`). They are grouped
into network calls of at most ``batch`` windows; each call crops the windows from the model input, gives each
crop its own image's prompt embeddings, and calls :meth:`ModelAdapter.predict_guided` once (CFG
doubles the batch inside). Outputs are accumulated with per-window weights into a numerator and a
denominator canvas (float32).

Windows of different canvas positions share a call when the adapter's network ignores the window
(SD 1.x/2.x U-Nets) or takes it per sample (SDXL: each window's crop coordinates in its own time
ids). SD3 (position table) and FLUX (position ids) condition a whole call on one window, so they
take one window per call; their windows are still batched across the images of the batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..devices import upload
from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..models import control
from ..models.base import Conditioning, PromptEmbeds, Window
from ..models.control_pixels import ControlView, grid_index
from ..sampling import StepContext

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")


@dataclass(frozen=True)
class ImageWindow:
    """One window of one image of the batch."""

    image: int
    window: Window


def window_free(adapter) -> bool:
    """True when the adapter's network output does not depend on where a window sits."""
    return not getattr(adapter, "window_conditioned", True)


def shares_calls(adapter) -> bool:
    """True when windows at different places may share a network call (see the module docstring)."""
    return window_free(adapter) or getattr(adapter, "per_sample_windows", False)


def latent_patch(adapter) -> int:
    """Windows must start and end on multiples of this many latent pixels (2 for the DiTs)."""
    return max(1, adapter.size_multiple // adapter.vae_factor)


def tile_size(adapter, tile: int | None, height: int, width: int, what: str) -> tuple[int, int]:
    """(th, tw) latent window size: ``tile`` (square, must fit the canvas) or the native size
    clamped to the canvas."""
    p = latent_patch(adapter)
    if tile is None:
        nh, nw = adapter.native_latent_size
        return min(nh, height), min(nw, width)
    if tile % p:
        raise InvalidArgumentError(f"{what} {tile} must be a multiple of {p} latent pixels for {adapter.family}")
    if tile > min(height, width):
        raise InvalidArgumentError(
            f"{what} {tile} latent px is larger than the {height}x{width} latent canvas; use at most "
            f"{min(height, width)}, or leave it unset for the model's native size"
        )
    return tile, tile


@functools.lru_cache(maxsize=256)
def _image_index(images: tuple[int, ...], device: torch.device) -> Tensor:
    # made and uploaded once per selection and device, not at every window call
    return upload(torch.tensor(images, dtype=torch.long), device)


def _select(embeds: PromptEmbeds, images: tuple[int, ...]) -> PromptEmbeds:
    def pick(v):
        return None if v is None else v.index_select(0, _image_index(images, v.device))

    extra = {k: (v if k in embeds.unbatched else pick(v)) for k, v in embeds.extra.items()}
    return PromptEmbeds(pick(embeds.embeds), pick(embeds.pooled), extra, embeds.unbatched)


def select_cond(cond: Conditioning, images: list[int]) -> Conditioning:
    """The conditioning of images ``images`` (repeats allowed), in that order."""
    if images == list(range(cond.batch)):
        return cond
    idx = tuple(images)
    neg = None if cond.negative is None else _select(cond.negative, idx)
    return Conditioning(_select(cond.positive, idx), neg, cond.guidance_scale, cond.network_guidance)


def _calls(windows: list[ImageWindow], batch: int, free: bool) -> list[list[ImageWindow]]:
    groups: dict[tuple, list[ImageWindow]] = {}
    for iw in windows:
        w = iw.window
        key = (w.height, w.width) if free else (w.top, w.left, w.height, w.width)
        groups.setdefault(key, []).append(iw)
    calls = []
    for group in groups.values():
        calls += [group[i : i + batch] for i in range(0, len(group), batch)]
    return calls


def fuse(
    ctx: StepContext, x_in: Tensor, windows: list[ImageWindow], batch: int, weights: dict[tuple[int, int], Tensor],
    *, wrap: int = 0, frame: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Numerator (B, C, H, W) and denominator (B, 1, H, W) of the weighted window fusion.

    ``weights[(h, w)]`` is the weight map of an h×w window. ``wrap`` > 0 lets windows reach up to
    ``wrap`` px past the right border and wrap around to the left (circular panoramas).
    ``frame`` = (rows, cols): ``x_in`` is the real canvas with a border of that many padding pixels
    on each side (DemoFusion's jittered views), so a ControlNet sees the real canvas's control
    under each window and none in the border.
    """
    b, c, h, w = x_in.shape
    src = torch.cat([x_in, x_in[..., :wrap]], dim=-1) if wrap else x_in
    num = torch.zeros(b, c, h, w + wrap, device=x_in.device, dtype=torch.float32)
    den = torch.zeros(b, 1, h, w + wrap, device=x_in.device, dtype=torch.float32)
    free, per_sample = window_free(ctx.adapter), shares_calls(ctx.adapter) and not window_free(ctx.adapter)
    if free and control.in_run(ctx.cond):
        per_sample = True  # the network ignores the place, but each window's ControlNet input depends on it
    for call in _calls(windows, batch, free or per_sample):
        win = [j.window for j in call] if per_sample else call[0].window
        x = torch.stack([win_crop(src, j) for j in call])
        view = None
        if frame is not None and control.in_run(ctx.cond):
            view = framed_view([j.window for j in call], frame, x.device)
        out = ctx.adapter.predict_guided(x, ctx.t, select_cond(ctx.cond, [j.image for j in call]), win,
                                         **control.view_kwargs(view))
        for k, j in enumerate(call):
            wt = weights[(j.window.height, j.window.width)]
            rows, cols = j.window.slices
            num[j.image, :, rows, cols] += out[k].float() * wt
            den[j.image, :, rows, cols] += wt
    if wrap:
        num[..., :wrap] += num[..., w:]
        den[..., :wrap] += den[..., w:]
        num, den = num[..., :w], den[..., :w]
    return num, den


def framed_view(windows: list[Window], frame: tuple[int, int], device) -> ControlView:
    """The control view of windows of a canvas padded by ``frame`` (rows, cols) on each side."""
    fh, fw = frame
    ch, cw = windows[0].canvas
    real = (ch - 2 * fh, cw - 2 * fw)
    return ControlView(real, torch.stack([
        grid_index(real, w.top - fh, w.left - fw, 1, w.height, w.width, device) for w in windows]))


def win_crop(src: Tensor, iw: ImageWindow) -> Tensor:
    return iw.window.crop(src[iw.image])

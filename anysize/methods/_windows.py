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

With regional prompts (``cond.regions``, :mod:`anysize.regions`) each window of a call is run once
per prompt whose weight map meets it, in the same call, and each output is weighted by that map too.
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
    if getattr(ctx.cond, "regions", None) is not None:
        return _fuse_regions(ctx, x_in, windows, batch, weights, wrap=wrap)
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
    return _fold_wrap(num, den, w, wrap)


def _fold_wrap(num: Tensor, den: Tensor, w: int, wrap: int) -> tuple[Tensor, Tensor]:
    """Columns fused past the right border (circular windows) added back onto the left ones."""
    if wrap:
        num[..., :wrap] += num[..., w:]
        den[..., :wrap] += den[..., w:]
        num, den = num[..., :w], den[..., :w]
    return num, den


def _fuse_regions(
    ctx: StepContext, x_in: Tensor, windows: list[ImageWindow], batch: int, weights: dict[tuple[int, int], Tensor],
    *, wrap: int = 0,
) -> tuple[Tensor, Tensor]:
    """:func:`fuse` with regional prompts (``ctx.cond.regions``, an :class:`anysize.regions.RegionPlan`).

    Every window is run once for each prompt whose weight map meets it (the background and the
    regions), all in the window's call: ``batch`` windows per call, each with its prompts. A
    prompt's output is fused with the window weight times its weight map W_s. Where W_s is 1 all
    over the window the map is skipped, so a region that covers everything with the image's own
    prompt gives exactly what no regions give. While a region bootstraps, its windows see, outside
    its mask, a flat colour (one of the image's, drawn each step from its own stream) noised to the
    step's level: x·M + noised(colour)·(1 - M).
    """
    plan = ctx.cond.regions
    b, c, h, w = x_in.shape
    if tuple(plan.weights.shape[-2:]) != (h, w):
        raise InvalidArgumentError(
            f"the regions were planned for a {tuple(plan.weights.shape[-2:])} latent canvas, not this loop's {(h, w)}"
        )

    def ext(t: Tensor) -> Tensor:  # columns past the right border wrap around (circular panoramas)
        return torch.cat([t, t[..., :wrap]], dim=-1) if wrap else t

    src = ext(x_in)
    maps = ext(plan.on("weights", x_in.device))
    backgrounds = _bootstrap_backgrounds(ctx, plan, x_in, ext)
    num = torch.zeros(b, c, h, w + wrap, device=x_in.device, dtype=torch.float32)
    den = torch.zeros(b, 1, h, w + wrap, device=x_in.device, dtype=torch.float32)
    free, per_sample = window_free(ctx.adapter), shares_calls(ctx.adapter) and not window_free(ctx.adapter)
    if free and control.in_run(ctx.cond):
        per_sample = True  # the network ignores the place, but each window's ControlNet input depends on it
    for call in _calls(windows, batch, free or per_sample):
        items = [(j, s) for j in call for s in range(plan.slots) if plan.touches(s, *_box(j.window))]
        crops = []
        for j, s in items:
            x = win_crop(src, j)
            if (j.image, s) in backgrounds and not plan.mask_full(s, *_box(j.window)):
                m = j.window.crop(backgrounds[(j.image, s)][1])
                x = x * m + j.window.crop(backgrounds[(j.image, s)][0]) * (1 - m)
            crops.append(x)
        win = [j.window for j, _ in items] if per_sample else call[0].window
        cond = select_cond(plan.table, [plan.rows[j.image][s] for j, s in items])
        out = ctx.adapter.predict_guided(torch.stack(crops), ctx.t, cond, win)
        for k, (j, s) in enumerate(items):
            wt = weights[(j.window.height, j.window.width)]
            if not plan.full(s, *_box(j.window)):
                wt = wt * j.window.crop(maps[s])
            rows, cols = j.window.slices
            num[j.image, :, rows, cols] += out[k].float() * wt
            den[j.image, :, rows, cols] += wt
    return _fold_wrap(num, den, w, wrap)


def _box(window: Window) -> tuple[int, int, int, int]:
    return window.top, window.left, window.height, window.width


def _bootstrap_backgrounds(ctx: StepContext, plan, x_in: Tensor, ext) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
    """{(image, slot): (noised flat background at the model input, the slot's mask)} for the slots
    bootstrapping at this step; each image draws its colours from its own stream, every such step."""
    slots = plan.bootstrapping(ctx.progress)
    if not slots:
        return {}
    gens = ctx.state.get("region_generators")
    if gens is None:  # the loop's first step: one stream per image, derived from its seed
        gens = ctx.state["region_generators"] = plan.colour_streams()
    colours, noise, masks = plan.on("colours", x_in.device), plan.on("noise", x_in.device), plan.on("masks", x_in.device)
    out = {}
    for i, g in enumerate(gens):
        picks = torch.randint(colours.shape[1], (len(slots),), generator=g).tolist()
        for s, pick in zip(slots, picks):
            x0 = colours[i, pick][:, None, None].expand_as(noise[i])
            state = ctx.adapter.from_x0(ctx.scheduler, x0, noise[i], ctx.t)
            out[(i, s)] = ext(ctx.model_input(state).to(x_in.dtype)), ext(masks[s].to(x_in.dtype))
    return out


def framed_view(windows: list[Window], frame: tuple[int, int], device) -> ControlView:
    """The control view of windows of a canvas padded by ``frame`` (rows, cols) on each side."""
    fh, fw = frame
    ch, cw = windows[0].canvas
    real = (ch - 2 * fh, cw - 2 * fw)
    return ControlView(real, torch.stack([
        grid_index(real, w.top - fh, w.left - fw, 1, w.height, w.width, device) for w in windows]))


def win_crop(src: Tensor, iw: ImageWindow) -> Tensor:
    return iw.window.crop(src[iw.image])

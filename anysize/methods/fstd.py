"""FSTD, Fast Seamless Tiled Diffusion (Any-Size-Diffusion, Zheng et al., AAAI 2024): implicit overlap.

Every step the canvas is cut into ``ceil(H/T)·ceil(W/T)`` non-overlapping native-size tiles whose
grid is shifted by a random offset (dy, dx), each in ``{0, …, offset_range-1}`` (default T/2, the
paper's 32 for 64-px latent tiles), the last tile of each row/column clamped to the border. Tiles
are batched into network calls, their outputs fused (Gaussian weights, which only matter where a
clamped tile overlaps its neighbour) and converted to ε; pixels no tile covers this step (a leading
strip narrower than the offset) reuse the previous step's fused ε. One scheduler step then runs on
the whole canvas. Because the seams move every step, an error made at a tile border is inside a tile
at the next step. Network calls per step = ceil(H/T)·ceil(W/T) per image (×2 with CFG), the count of
plain non-overlapping tiling.

Follows the official code (ProAirVerse/Any-Size-Diffusion ``ASD-upscale``, spec ``asd_tiling.md``
§1.3) with these deliberate differences:

* Placement: default ``placement="improved"`` (spec §6.1b): same tile count, never two identical
  tiles (the official ``min(j·T + d, L - T)`` repeats the last tile when d >= L - (n-1)·T, wasting
  a network call), and no stale strip at all when d >= that remainder. ``placement="asd"`` gives
  the official placement.
* Zero shift on the final step (``zero_final_shift=True``), so the returned x0 never contains
  stale ε; the official code shifts on the final step unless its counter happens to be 0 mod 4.
* Offsets come from a dedicated ``torch.Generator`` per image, derived from that image's seed, and
  the reset counter restarts with every run (official: Python's global ``random`` and a counter
  kept across images). An image therefore gets the same result alone or in a batch; the offsets
  are per image, so images of one batch have different grids.
* Tiles are batched (``tile_batch_size``, official: one tile per call) and any sampler works: the
  fused ε is converted back into the model's own parametrisation (ε, v or flow velocity) through the
  scheduler's tables, and the scheduler's own step runs on the canvas (official: DDPM only).
  ε_ref is kept as ε in float32, as the spec recommends.
* Text-to-image from pure noise (official: StableSR super-resolution with a clean LR latent
  condition); the conditioning of a tile is its crop position (SDXL crop coordinates, SD3
  position-table slice, FLUX position ids).
* The Gaussian window uses the symmetric midpoint (T-1)/2 on both axes (official: T/2 for rows);
  along an axis with a single tile the weight is 1.
* Offsets are multiples of the DiT patch size (2) for SD3/FLUX so tiles stay on the token grid.
* Tile size: default the model's native latent size, shrunk to the canvas along a shorter side
  (official: fixed 64, with inputs enlarged to a short side of at least 512 px so a tile always
  fits); an explicit ``tile`` larger than the canvas is an error.

Regional prompts (``regions=``, :mod:`anysize.regions`; not in the official code): each tile runs once
per prompt whose weight map meets it and the outputs are fused as in ``multidiffusion`` (see its
docstring and :func:`anysize.methods._windows.fuse`), on the step's shifted grid.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..models.base import Window
from ..options import option
from ..sampling import StepContext
from ..tiling_grids import PLACEMENTS, WEIGHTINGS, fusion_weights, shifted_origins
from ._windows import ImageWindow, fuse, latent_patch, tile_size
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")

#: added to an image's seed to seed its offset generator (a stream separate from the noise)
_OFFSET_SEED_SALT = 0x0F57D


@dataclasses.dataclass
class FSTDOptions(MethodOptions):
    tile: int | None = option(None, "tile side", kind="int", low=1, unit="latent px",
                              unset="the model's native latent size")
    offset_range: int | None = option(None, "grid offsets are drawn from 0 .. offset_range-1 (0: no shift)",
                                      kind="int", low=0, unit="latent px", unset="half the tile")
    reset_every: int = option(4, "every reset_every-th step (0, P, 2P, ...) uses the unshifted grid (official: 4)",
                              low=1, unit="steps")
    placement: str = option("improved", "tile placement: improved (never a duplicate tile) or asd (the official one)",
                            choices=PLACEMENTS)
    zero_final_shift: bool = option(True, "the unshifted grid on the final step")
    weighting: str = option("gaussian", "fusion weights where clamped tiles overlap (official: gaussian)",
                            choices=WEIGHTINGS)
    tile_batch_size: int = option(8, "tiles per network call", low=1)

    def validate_together(self) -> None:
        if self.tile is not None and self.offset_range is not None and self.offset_range > self.tile:
            raise InvalidArgumentError(f"offset_range {self.offset_range} is larger than the tile {self.tile}")


def _covers(windows: list[ImageWindow], batch: int, height: int, width: int) -> bool:
    """Whether ``windows`` cover every latent pixel of every image (all fusion weights
    are positive, so this is where the fused denominator is non-zero)."""
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    for j in windows:
        rows, cols = j.window.slices
        mask[j.image, rows, cols] = True
    return bool(mask.all())


@register
class FSTD(Method):
    name = "fstd"
    summary = "non-overlapping tiles on a grid shifted randomly every step (Any-Size-Diffusion's FSTD)"
    Options = FSTDOptions
    takes_regions = True
    bounded_memory = True

    def geometry(self, adapter, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((tile h, w), (offset range h, w)) in latent px for a latent canvas of height×width."""
        o = self.options
        th, tw = tile_size(adapter, o.tile, height, width, "tile")
        if o.offset_range is None:
            ranges = (th // 2, tw // 2)
        else:
            if o.offset_range > min(th, tw):
                raise InvalidArgumentError(f"offset_range {o.offset_range} is larger than the tile ({th}x{tw} latent px)")
            ranges = (o.offset_range, o.offset_range)
        return (th, tw), ranges

    def offsets(self, ctx: StepContext, batch: int, ranges: tuple[int, int]) -> list[tuple[int, int]]:
        """(dy, dx) per image for this step, from each image's own offset stream."""
        o = self.options
        gens = ctx.state.get("fstd_generators")
        if gens is None:  # the loop's first step: one stream per image, derived from its seed
            gens = ctx.state["fstd_generators"] = [
                torch.Generator("cpu").manual_seed((s + _OFFSET_SEED_SALT) % 2**63) for s in ctx.seeds
            ]
        if ctx.index % o.reset_every == 0 or (o.zero_final_shift and ctx.is_last):
            return [(0, 0)] * batch
        p = latent_patch(ctx.adapter)
        counts = [max(1, -(-r // p)) for r in ranges]  # multiples of p below r
        out = []
        for g in gens:
            dy = int(torch.randint(counts[0], (1,), generator=g)) * p
            dx = int(torch.randint(counts[1], (1,), generator=g)) * p
            out.append((dy, dx))
        return out

    def tiles(self, height: int, width: int, tile: tuple[int, int], offset: tuple[int, int]) -> list[Window]:
        """The step's tile windows, row-major."""
        th, tw = tile
        rows = shifted_origins(height, th, offset[0] % th, self.options.placement)
        cols = shifted_origins(width, tw, offset[1] % tw, self.options.placement)
        return [Window(r, c, th, tw, (height, width)) for r in rows for c in cols]

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        o = self.options
        x_in = ctx.model_input(x)
        b, _, h, w = x.shape
        (th, tw), ranges = self.geometry(ctx.adapter, h, w)
        windows = []
        for i, off in enumerate(self.offsets(ctx, b, ranges)):
            windows += [ImageWindow(i, win) for win in self.tiles(h, w, (th, tw), off)]
        weights = {(th, tw): fusion_weights(th, tw, o.weighting, single_row=th == h, single_col=tw == w,
                                            device=x.device)}
        num, den = fuse(ctx, x_in, windows, o.tile_batch_size, weights)
        covered = den > 0
        out = (num / torch.where(covered, den, torch.ones_like(den))).to(x.dtype)
        if not _covers(windows, b, h, w):  # decided from the tiles on the host: no wait for the device
            eps_ref = ctx.state.get("fstd_eps_ref")
            if eps_ref is None:  # cannot happen: the first step is never shifted
                raise RuntimeError("FSTD: uncovered pixels on the first step")
            stale = ctx.noise_space.output_from_noise(x.float(), eps_ref, ctx.t, ctx.adapter.prediction_type).to(x.dtype)
            out = torch.where(covered, out, stale)
        if ranges[0] > 1 or ranges[1] > 1:  # a later step may leave pixels uncovered
            ctx.state["fstd_eps_ref"] = ctx.noise_space.noise_from_output(x.float(), out.float(), ctx.t, ctx.adapter.prediction_type)
        return ctx.scheduler_step(out, x)

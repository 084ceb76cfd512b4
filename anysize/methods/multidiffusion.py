"""MultiDiffusion (Bar-Tal et al., ICML 2023) and Mixture of Diffusers (Jiménez 2023): explicit overlap.

Every step, native-size windows placed every ``stride`` latent px are denoised by the network and
their guided outputs are fused per pixel with ``uniform`` weights (MultiDiffusion's mean) or
``gaussian`` weights (Mixture of Diffusers, σ = 0.1·window per axis); one scheduler step then runs
on the whole canvas. ``circular`` wraps windows around the left/right border for 360° panoramas.
``view_batch_size`` windows go into one network call (each with all images of the batch).

Checked against diffusers' ``StableDiffusionPanoramaPipeline`` (the official MultiDiffusion port) in
``tests/test_multidiffusion.py``: same latents to ≤ 1e-4 with DDIM. Deliberate differences from the
official code (omerbt/MultiDiffusion, diffusers' panorama pipeline):

* The guided network outputs are fused and one scheduler step runs on the canvas, instead of one
  scheduler step per window followed by averaging x_{t-1}. For deterministic samplers (DDIM η = 0,
  Euler, flow Euler) and for linear multistep ones (PNDM, DPM-Solver) the two are identical (the
  step is affine in the output); for stochastic samplers the canvas gets one global noise draw
  instead of one per window, and no per-window scheduler state copies are needed. Steps that are
  not affine in the output differ slightly: DDIM/DDPM with ``clip_sample=True`` (diffusers' default
  when a DDIM scheduler is built from SD 1.x's PNDM config; the SD checkpoints' own configs set it
  False) clip the fused x0 once instead of each window's x0.
* Full coverage: when ``(side - window)`` is not a multiple of the stride, a last window clamped to
  the border is added. The official code leaves those last pixels uncovered, and they become 0.
  In circular mode the number of windows is ``ceil(width / stride)`` (official: ``width // stride``,
  which can leave a gap when the width is not a multiple of the stride).
* Window and stride are options (official: window 64, stride 8 latent px); the default window is
  the model's native latent size and the default stride window/8, the official 8 at 64 (``stride``
  trades quality for speed: window/4 needs about 4x fewer windows). A default window larger than the
  canvas shrinks to it along that axis (the official code does the same implicitly by slicing).
* Any family: SDXL windows pass their crop coordinates, SD3 windows their slice of the position
  table, FLUX windows their position ids (official: SD 1.x/2.x only). Such windows are batched
  across images but not across positions (see :mod:`anysize.methods._windows`).
* Circular padding wraps the denoising only; the final VAE decode is the ordinary one (diffusers
  decodes with an 8-latent wrap pad).
* The Gaussian weights use the symmetric midpoint (n-1)/2 on both axes (Mixture of Diffusers uses
  n/2 for rows); along an axis with a single window the weight is 1 (it cancels anyway).

Regional prompts (``regions=``, :mod:`anysize.regions`; MultiDiffusion's region-based generation,
official ``region_based.py``, and Mixture of Diffusers' canvas of prompted tiles with
``weighting="gaussian"``): every window runs once per prompt whose weight map meets it, all in the
window's call, and the outputs are fused with window weight × W_s (see :func:`anysize.methods._windows.fuse`).
Deliberate differences from ``region_based.py``:

* Guided outputs are fused and one scheduler step runs on the canvas (as above), instead of one
  step per view and prompt followed by a mask-weighted mean of x_{t-1}; for binary masks and
  affine steps the two agree, also while bootstrapping (inside the mask the composed view is the
  canvas). With feathered masks the official form would step the composed view along the ramp.
  ``test_regions.py::test_a_region_over_the_whole_canvas_with_the_main_prompt_is_no_regions``.
* A prompt runs only on the windows its weight map meets (official: every prompt on every view,
  masked afterwards): the same result with fewer calls.
  ``test_regions.py::test_windows_run_only_the_prompts_that_meet_them``.
* Weights, feathered edges and masks area-averaged onto the latent grid (official: binary masks,
  thresholded at 0.5 and nearest-resized; no weights). The background weight is max(0, 1 - Σ M_k),
  as in the official code. ``test_regions.py::test_latent_weights_background_and_overlap``,
  ``::test_feather_ramps_linearly_across_the_edge_and_keeps_the_canvas_border``,
  ``::test_weights_count_only_where_prompts_share_a_pixel``.
* Bootstrapping is per region, a share of the steps (default 0.2; official: one count for all, 20
  steps, i.e. 40 % of its 50). Its flat colours are 8 per image, each the mean latent (posterior mode)
  of a small flat image (official: 20 posterior samples of 512² flat images); one colour is drawn per
  image, region and step (official: per view, region and step), and the noise is a stream of the
  image's own seed (official: the initial latents and the global RNG), so an image is the same alone
  or in a batch. ``test_regions.py::test_an_image_of_a_batch_is_that_image_alone``,
  ``::test_regions_change_the_image_and_bootstrapping_changes_it_again``.
* A region's negative prompt defaults to the image's; every family and sampler (official: SD 1.5 /
  2.0, DDIM).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..models.base import Window
from ..options import option
from ..sampling import StepContext
from ..tiling_grids import WEIGHTINGS, fusion_weights, overlap_origins
from ._windows import ImageWindow, fuse, latent_patch, tile_size
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


@dataclasses.dataclass
class MultiDiffusionOptions(MethodOptions):
    window: int | None = option(None, "window side", kind="int", low=1, unit="latent px",
                                unset="the model's native latent size")
    stride: int | None = option(None, "distance between window starts", kind="int", low=1, unit="latent px",
                                unset="window/8, MultiDiffusion's 8 for 64")
    weighting: str = option("uniform", "fusion weights: uniform (MultiDiffusion) or gaussian (Mixture of Diffusers)",
                            choices=WEIGHTINGS)
    circular: bool = option(False, "wrap windows around the left/right border (360° panoramas)")
    view_batch_size: int = option(4, "windows per network call", low=1)

    def validate_together(self) -> None:
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise InvalidArgumentError(f"stride {self.stride} is larger than the window {self.window}: pixels would be skipped")


@register
class MultiDiffusion(Method):
    name = "multidiffusion"
    summary = "overlapping native-size windows fused every step (MultiDiffusion / Mixture of Diffusers)"
    Options = MultiDiffusionOptions
    takes_regions = True
    bounded_memory = True

    @property
    def wraps(self) -> bool:
        return self.options.circular

    @classmethod
    def demo_options(cls, adapter) -> dict:
        # window/2 instead of window/8: 9 instead of 81 windows per step at 4x area (still overlapping by half)
        p = latent_patch(adapter)
        return {"stride": max(p, min(adapter.native_latent_size) // 2 // p * p)}

    def geometry(self, adapter, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((window h, w), (stride h, w)) in latent px for a latent canvas of height×width."""
        o = self.options
        th, tw = tile_size(adapter, o.window, height, width, "window")
        p = latent_patch(adapter)
        if o.stride is None:
            strides = tuple(max(p, t // 8 // p * p) for t in (th, tw))
        else:
            if o.stride % p:
                raise InvalidArgumentError(f"stride {o.stride} must be a multiple of {p} latent pixels for {adapter.family}")
            strides = (min(o.stride, th), min(o.stride, tw))
            if o.stride > min(th, tw):
                raise InvalidArgumentError(f"stride {o.stride} is larger than the window {min(th, tw)}: pixels would be skipped")
        return (th, tw), strides

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        o = self.options
        b, _, h, w = x_in.shape
        (th, tw), (sh, sw) = self.geometry(ctx.adapter, h, w)
        rows = overlap_origins(h, th, sh)
        cols = overlap_origins(w, tw, sw, circular=o.circular)
        wrap = max(0, cols[-1] + tw - w)
        windows = [ImageWindow(i, Window(r, c, th, tw, (h, w))) for r in rows for c in cols for i in range(b)]
        weights = {(th, tw): fusion_weights(th, tw, o.weighting, single_row=len(rows) == 1,
                                            single_col=len(cols) == 1 and not wrap, device=x_in.device)}
        num, den = fuse(ctx, x_in, windows, o.view_batch_size * b, weights, wrap=wrap)
        return (num / den).to(x_in.dtype)

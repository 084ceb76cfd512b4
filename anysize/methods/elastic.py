"""ElasticDiffusion (Haji-Ali, Balakrishnan, Ordonez, CVPR 2024): global/local score separation.

Classifier-free guidance is split into its two terms and each is estimated where it is cheap and
reliable (spec ``elastic.md`` §1-§5):

* the **unconditional score** on native-size crops of the canvas: cores of ``patch_size`` latent
  px (default native/2) each run inside the native window that contains it (implicit overlap: the
  rest of the window is context), only the core is kept, first writer wins;
* the **class direction** ε(prompt) - ε(negative) on a *reference*: one latent pixel picked per
  block of the canvas (the long side becomes the native side, the aspect ratio is kept), padded to
  the native size with a VAE-encoded constant colour noised to the current level; the direction is
  written back at the picked positions and block-constant elsewhere;
* **resampling**: R more reference passes per step, each block switching with probability
  ``new_p`` to a pixel it has not used yet, so more pixels get their own direction;
* the **repaint pass** (when R > 0, all but the last step): the step's result is re-noised to t
  and the step is redone with one strided reference and guidance w/3;
* **reduced-resolution guidance** (RRG): x_{t-1} += 2λ_i/(C·H·W)·(U(x0_ref) - x0̂), with the
  cosine schedule λ_i = λ0·(½(1 + cos(π i/S)))^γ, S = N - ⌊N·rrg_stop_t⌋, while λ_i > 10.

Defaults are the official ``generate_image()`` ones (R 20, new_p 0.3, λ0 1000, γ 3, stop 0.2,
repaint on, core native/2); ``preset`` selects the settings of the official CLI (``cli``), README
(``readme``) or Gradio demo (``gradio``: R and λ0 from its per-size table, stop 0.4). The official
guidance scale is 10 (``guidance=10`` / ``--guidance 10``; anysize's default is the model's).
Below the native size the canvas itself is padded to native with the background, as the official
code does, for the reference and the single local patch alike (which are then the same network
input, so one evaluation serves both). Padding goes as the official ``background_pad``: the width
first (left/right blocks as tall as the input), then the height across the whole padded width, so
with both axes below native the corner blocks take the top/bottom colour.

All native sizes come from the adapter (``native_latent_size``); every step is expressed through
the scheduler's tables (:class:`~anysize.noise.NoiseSpace`), so ε and v-prediction and any
diffusers scheduler work (DDIM, the official one, reproduces the official update). The clean
estimates the repaint pass and RRG use are clipped the way the scheduler's own step clips its
estimate (``clip_sample`` / ``clip_sample_range``, or dynamic ``thresholding``;
:meth:`~anysize.noise.NoiseSpace.clip_x0`), as the official code takes them from DDIM's
``pred_original_sample``; schedulers that do not clip (SD's shipped configs, Euler) are unchanged.

Deliberate differences from the official code (ElasticDiffusion-official, ``elastic_diffusion.py``),
each checked in ``tests/test_elastic.py``:

1. Resampling for any downsampling ratio: each axis is split into blocks [⌊iH/h⌋, ⌊(i+1)H/h⌋),
   picks are exact (y, x) positions inside their block, the direction is written exactly there,
   and the rest is filled block-constant on the same partition. The official index bookkeeping is
   only right up to ratio 2 (spec §4.3); at ratio 2 both pick x[::2, ::2] on the first pass.
2. Native sizes from the model (official: 64/128 latent and 512/1024 px hard-coded, so a 768-px
   SD 2.x model ran at 512).
3. Speed without changing the image: all R+1 reference passes of a step go into one network call
   (``batch_references``; official: one call per pass), local patches are batched
   (``view_batch_size`` default 16, as the official CLI/README/demo; its constructor default is 1),
   and each background block is VAE-encoded once per run and only re-noised per step
   (``cache_background``; official: encoded again for every padded call). At or below the native
   size the local patch equals the reference input and is not evaluated twice.
4. Background colour (``background``): by default one random colour per image and side for the
   whole run, as the paper's "constant colour background" (official: a new colour every timestep,
   from an md5-seeded global RNG that it then reseeds; ``background="per_step"`` draws a new one
   every step like that, from the image's generator). ``"gray"``: a constant mid-gray, no draw.
   Within a step every pass sees the same noisy pad, as in the official code.
5. Every random draw (picks, colours, background noise, repaint noise) comes from generators
   derived from each image's seed: same seed, same image, alone or in a batch; the global RNG is
   never touched (checked for every method by tests/test_method_contract.py).
6. The repaint re-noising is the exact one-jump forward process from t_prev to t (official: 1000/N
   single DDPM transitions, off by one timestep), and the first-pass update is a DDIM move through
   the scheduler's tables that leaves the scheduler's state alone, so the scheduler's own
   ``step`` runs exactly once per timestep (official: DDIM.step twice, which only a stateless
   scheduler allows).
7. The switch to a new pick has probability ``new_p`` exactly (official: 30/101 for 0.3).
8. The direction map is kept in float32 and "already written" is a boolean mask (official: fp16,
   and "written" means "value != 0").
9. RRG uses the last reference pass's own direction (official, with R > 0 and no repaint pass: the
   nearest-downsampled full map, which mixes passes). The RRG update is applied in the frame of the
   model input (1/c_in(t_prev) for VE schedulers; identical to the official for DDIM).
10. SDXL: every call (patches and reference) is conditioned as a native-size image (original and
    target size = native, crop (0, 0)), which lets patches share a call (official: 4x the output
    size for every call). Without a negative prompt SDXL's pipeline zeroes the negative embedding
    (``force_zeros_for_empty_prompt``), as in plain generation (official: encodes "").
11. Bad sizes and options raise clear errors (official: raises a plain string for sizes not
    divisible by 8, which is itself a TypeError; its README passes a non-existent ``drop_p``).
12. ControlNet (not in the official code): each local crop and each reference pass gets the
    control blocks of the canvas pixels it holds, none in the background padding
    (``tests/test_controlnet.py::test_every_call_gets_the_control_under_its_pixels``).

``msw_msa=True`` runs every network call inside :func:`anysize.patch`'s shifted-window attention
(also at native size, where Elastic's calls are), the HiDiffusion operator, for composability.

Network evaluations per step (one per sample; P local views per image, B images):
``B·(2(R+1) + P)``, plus ``B·(2 + P)`` for the repaint pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..devices import upload
from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..models import control
from ..models.base import Conditioning, PromptEmbeds, Window
from ..models.control_pixels import ControlView, grid_index, pad_index
from ..options import option
from ..patches.hidiffusion import HiDiffusionPatch
from ..sampling import StepContext
from ..tiling_grids import block_index, block_starts, context_views
from ._windows import latent_patch, select_cond
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")

# added to an image's seed for each of its random streams, so they are independent of the noise
# and of each other (batched and sequential reference passes then draw exactly the same numbers)
_PICK_SALT, _COLOUR_SALT, _BG_NOISE_SALT, _RENOISE_SALT = 0xE1A5, 0xE1A6, 0xE1A7, 0xE1A8

#: pad colours of the subsampled reference (option ``background``)
BACKGROUNDS = ("per_run", "per_step", "gray")

#: the official code applies RRG only while its weight exceeds this
RRG_MIN_WEIGHT = 10.0

#: named official settings (spec §6.2, §6.3); unset options take these, explicit ones win
PRESETS: dict[str, dict[str, Any]] = {
    "generate_image": {},  # the dataclass defaults are the official generate_image() defaults
    "cli": dict(resampling_steps=10, new_p=0.3, rrg_init_weight=4000.0, cosine_scale=10.0, rrg_stop_t=0.2),
    "readme": dict(resampling_steps=7, new_p=0.3, rrg_init_weight=1000.0, cosine_scale=10.0, rrg_stop_t=0.2),
    "gradio": dict(resampling_steps=None, new_p=0.3, rrg_init_weight=None, cosine_scale=10.0, rrg_stop_t=0.4),
}


def gradio_table(height: int, width: int, native: tuple[int, int]) -> tuple[int, float]:
    """(R, λ0) of the official Gradio demo's per-resolution examples (SDXL, spec §6.3), by area
    over native: 2048² (4x) -> (10, 2000); 2048x1536 (3x) -> (10, 1500); larger than native
    otherwise -> (7, 1000); at or below native (768², 512²) -> (0, 0)."""
    if height <= native[0] and width <= native[1]:
        return 0, 0.0
    area = height * width / (native[0] * native[1])
    if area >= 3.5:
        return 10, 2000.0
    if area >= 2.5:
        return 10, 1500.0
    return 7, 1000.0


@dataclass
class ElasticOptions(MethodOptions):
    PRESETS = PRESETS

    preset: str | None = option(None, "official settings by name; unset options take the preset's values",
                                choices=tuple(PRESETS), unset="the defaults (= generate_image)")
    resampling_steps: int | None = option(20, "R: extra reference passes per step (0: one strided reference, no repaint)",
                                          kind="int", low=0, unset="from the gradio preset's per-size table")
    new_p: float = option(0.3, "probability that a block switches to a new pixel on a resampling pass",
                          low=0.0, high=1.0)
    rrg_init_weight: float | None = option(1000.0, "λ0 of reduced-resolution guidance (0: off)", kind="float",
                                           low=0.0, unset="from the gradio preset's per-size table")
    cosine_scale: float = option(3.0, "γ, the exponent of the cosine decay of the RRG weight", low=0.0)
    rrg_stop_t: float = option(0.2, "RRG stops when this fraction of the steps is left", low=0.0, high=1.0)
    repaint: bool = option(True, "redo each step but the last on the re-noised result with guidance w/repaint_divisor")
    repaint_divisor: float = option(3.0, "the repaint pass's guidance divisor", low=0.0, low_open=True)
    patch_size: int | None = option(None, "core side of a local patch (the rest of its native window is context)",
                                    kind="int", low=1, unit="latent px", unset="half the native latent size")
    view_batch_size: int = option(16, "local patches per network call (times the number of images)", low=1)
    batch_references: bool = option(True, "all R+1 reference passes of a step in one network call "
                                          "(false: one call per pass, as the official code)")
    cache_background: bool = option(True, "VAE-encode each background block once per run "
                                          "(false: for every padded call, as the official code)")
    background: str = option("per_run", "pad colour of the reference: per_run (one random colour per image and "
                                        "side), per_step (a new one every step, official) or gray",
                             choices=BACKGROUNDS)
    msw_msa: bool = option(False, "shifted-window attention (HiDiffusion's MSW-MSA) inside every network call")

    def validate_together(self) -> None:
        by_size = self.preset == "gradio"
        if self.resampling_steps is None and not by_size:
            raise InvalidArgumentError("resampling_steps may only be unset with preset 'gradio' (its per-size table)")
        if self.rrg_init_weight is None and not by_size:
            raise InvalidArgumentError("rrg_init_weight may only be unset with preset 'gradio' (its per-size table)")


@dataclass(frozen=True)
class Geometry:
    """Where everything sits for one latent canvas size."""

    canvas: tuple[int, int]
    native: tuple[int, int]
    ref: tuple[int, int]  # reference (h, w) before padding
    rows: list  # context_views along the height
    cols: list
    crop: tuple[int, int]  # size of every local crop (the native window, or the canvas side if shorter)

    @property
    def views(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def local_is_reference(self) -> bool:
        """At or below the native size the single local patch is the (unsubsampled) reference."""
        return self.ref == self.canvas and self.views == 1


def reference_size(height: int, width: int, native: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the reference latent: the canvas scaled so that it just fits the native size,
    aspect ratio kept, floored (integer arithmetic); the canvas itself when it already fits."""
    nh, nw = native
    if height <= nh and width <= nw:
        return height, width
    if width * nh >= height * nw:  # the width is the limiting side
        return max(1, height * nw // width), nw
    return nh, max(1, width * nh // height)


def resampling_plan(height: int, width: int, ref: tuple[int, int], passes: int, new_p: float,
                    generator: torch.Generator | None) -> Tensor:
    """(passes, h·w) flat canvas positions (y·width + x) of the pixel each reference cell takes.

    Cell (i, j) owns the block [⌊iH/h⌋, ⌊(i+1)H/h⌋) x [⌊jW/w⌋, ⌊(j+1)W/w⌋). Pass 0 takes each
    block's top-left pixel; every later pass draws, per block, a pixel uniformly among those it has
    not used yet (among all once all are used) and switches to it with probability ``new_p``,
    else keeps its previous pixel.
    """
    h, w = ref
    rs, cs = block_starts(height, h), block_starts(width, w)
    block = (block_index(height, h)[:, None] * w + block_index(width, w)[None, :]).flatten()
    n = height * width
    cur = (torch.tensor(rs[:-1])[:, None] * width + torch.tensor(cs[:-1])[None, :]).flatten()
    picks = [cur]
    used = torch.zeros(n, dtype=torch.bool)
    used[cur] = True
    for _ in range(passes - 1):
        # a random permutation ranks the pixels; used ones rank after every unused one, and each
        # block takes its best-ranked pixel: uniform over the unused pixels of the block
        perm = torch.randperm(n, generator=generator)
        key = perm + used.long() * n
        best = torch.full((h * w,), 2 * n, dtype=torch.long).scatter_reduce(0, block, key, "amin")
        inverse = torch.empty(n, dtype=torch.long)
        inverse[perm] = torch.arange(n)
        candidate = inverse[best % n]
        switch = torch.rand(h * w, generator=generator) < new_p
        cur = torch.where(switch, candidate, cur)
        used[cur] = True
        picks.append(cur)
    return torch.stack(picks)


@functools.lru_cache(maxsize=64)
def _block_index_on(length: int, parts: int, device: torch.device) -> Tensor:
    return upload(block_index(length, parts), device)  # once per size and device, not per step


def block_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of (..., h, w) to (..., H, W) on the block partition of the plan."""
    h, w = x.shape[-2:]
    rows, cols = _block_index_on(size[0], h, x.device), _block_index_on(size[1], w, x.device)
    return x[..., rows[:, None], cols[None, :]]


def rrg_weight(index: int, steps: int, init: float, cosine_scale: float, stop: float) -> float:
    """λ_i of the official cosine schedule (0 from step S = N - ⌊N·stop⌋ on)."""
    s = steps - int(steps * stop)
    if index >= s or init == 0:
        return 0.0
    return init * (0.5 * (1 + math.cos(math.pi * index / s))) ** cosine_scale


@dataclass
class _Run:
    """Per-run state: generators per image, background cache, the current step's noisy pads."""

    picks: list[torch.Generator]
    colours: list[torch.Generator]
    bg_noise: list[torch.Generator]
    renoise: list[torch.Generator]
    colour: dict = field(default_factory=dict)  # (image, side, step or None) -> (3,) colour in [0, 1]
    clean: dict = field(default_factory=dict)  # (image, side, (h, w), step or None) -> encoded background
    noisy: dict = field(default_factory=dict)  # same keys -> background at the current level (model input)
    noisy_step: int = -1
    encodes: int = 0


@register
class Elastic(Method):
    name = "elastic"
    summary = "local unconditional patches + a global class direction from a subsampled reference (ElasticDiffusion)"
    Options = ElasticOptions
    families = ("sd1", "sd2", "sdxl")
    needs_guidance = True  # its two terms are CFG's unconditional and class-direction parts
    # at native size the reference is the canvas: without resampling (and so without the repaint
    # pass) the two terms add up to plain CFG, and RRG pulls x0 towards itself
    native_options = {"resampling_steps": 0}

    @classmethod
    def demo_options(cls, adapter) -> dict:
        # the defaults cost 2(R+1) + 2P + 2 evaluations per step (R = 20, P = 16: 76 at 4x area);
        # R = 1 without the repaint pass and cores of 7/8 native (P = 9) make it 13, which keeps
        # the sheet's row within its budget (a few seconds at 10 steps on 2 CPU cores for the toy model)
        p = latent_patch(adapter)
        core = max(p, min(adapter.native_latent_size) * 7 // 8 // p * p)
        return {"resampling_steps": 1, "repaint": False, "patch_size": core}

    # ------------------------------------------------------------------ settings and geometry
    def settings(self, height: int, width: int, native: tuple[int, int]) -> tuple[int, float]:
        """(R, λ0) for a latent canvas (the gradio preset reads them from its size table)."""
        o = self.options
        r, lam = o.resampling_steps, o.rrg_init_weight
        if r is None or lam is None:
            tr, tl = gradio_table(height, width, native)
            r = tr if r is None else r
            lam = tl if lam is None else lam
        return r, float(lam)

    def geometry(self, adapter, height: int, width: int) -> Geometry:
        nh, nw = adapter.native_latent_size
        o = self.options
        if o.patch_size is not None:
            if o.patch_size % latent_patch(adapter):
                raise InvalidArgumentError(f"patch_size must be a multiple of {latent_patch(adapter)} latent px")
            if o.patch_size > min(nh, nw):
                raise InvalidArgumentError(
                    f"patch_size {o.patch_size} is larger than the native latent size {min(nh, nw)}: use 1..{min(nh, nw)}"
                )
            sh = sw = o.patch_size
        else:
            sh, sw = max(1, nh // 2), max(1, nw // 2)
        return Geometry(
            (height, width), (nh, nw), reference_size(height, width, (nh, nw)),
            context_views(height, sh, nh), context_views(width, sw, nw), (min(nh, height), min(nw, width)),
        )

    def evaluations_per_step(self, adapter, height: int, width: int, *, repaint_step: bool = True) -> int:
        """Network evaluations per image for one step at a latent canvas of height x width."""
        geo = self.geometry(adapter, height, width)
        r, _ = self.settings(height, width, geo.native)
        local = 0 if geo.local_is_reference else geo.views
        n = 2 * (r + 1) + local
        if self.options.repaint and r > 0 and repaint_step:
            n += 2 + local
        return n

    # ------------------------------------------------------------------ run and per-run state
    def session(self, request):
        """Every loop (from noise, or an img2img refine) runs inside the optional windowed attention."""
        if not self.options.msw_msa:
            return super().session(request)
        # windowed attention only (no RAU-Net, so no step position), also at the native size where the calls are
        return HiDiffusionPatch(request.adapter, raunet=False, apply_at_native=True, seed=list(request.seeds))

    def _run_state(self, ctx: StepContext) -> _Run:
        run = ctx.state.get("elastic")
        if run is None:  # the loop's first step: every random stream of every image, from its seed

            def gens(salt):
                return [torch.Generator("cpu").manual_seed((s + salt) % 2**63) for s in ctx.seeds]

            run = ctx.state["elastic"] = _Run(gens(_PICK_SALT), gens(_COLOUR_SALT), gens(_BG_NOISE_SALT),
                                              gens(_RENOISE_SALT))
        if run.noisy_step != ctx.index:
            run.noisy, run.noisy_step = {}, ctx.index
            if self.options.background == "per_step":  # last step's colours are never used again
                run.clean = {}
        return run

    # ------------------------------------------------------------------ background padding
    def _background(self, ctx: StepContext, run: _Run, image: int, side: str, size: tuple[int, int], like: Tensor) -> Tensor:
        """The (C, h, w) background block of one image and side at this step's noise level, in
        model-input space: a constant colour, VAE-encoded, noised to t."""
        mode = self.options.background
        step = ctx.index if mode == "per_step" else None
        key = (image, side, size, step)
        adapter = ctx.adapter
        clean = run.clean.get(key)
        if clean is None:
            colour = run.colour.get((image, side, step))
            if colour is None:
                colour = (torch.full((3,), 0.5) if mode == "gray"
                          else torch.rand(3, generator=run.colours[image]))
                run.colour[(image, side, step)] = colour
            f = adapter.vae_factor
            img = colour.view(1, 3, 1, 1).expand(1, 3, size[0] * f, size[1] * f)
            clean = adapter.encode(img, generator=run.colours[image], tiled=False)[0]
            run.encodes += 1
            if self.options.cache_background:
                run.clean[key] = clean
        noisy = run.noisy.get(key)  # noisy is reset every step
        if noisy is None:
            noise = upload(torch.randn(clean.shape, generator=run.bg_noise[image], dtype=torch.float32), clean.device)
            ns = ctx.noise_space
            noisy = ns.from_x0(clean.float(), noise, ctx.t) * ns.input_scale(ctx.t)
            noisy = run.noisy[key] = noisy.to(device=like.device, dtype=like.dtype)
        return noisy

    def _pad(self, ctx: StepContext, run: _Run, z: Tensor, images: list[int], native: tuple[int, int]):
        """Pad (K, C, h, w) model inputs to the native size with each one's image background;
        returns the padded tensor and the (top, left) of z inside it."""
        k, c, h, w = z.shape
        nh, nw = native
        if (h, w) == (nh, nw):
            return z, (0, 0)
        top, left = (nh - h) // 2, (nw - w) // 2
        rows = []
        for img, zi in zip(images, z):
            # the width first, then the height across the whole padded width, as the official
            # background_pad: the corner blocks belong to the top and bottom bars
            out = zi
            if nw > w:
                parts = [self._background(ctx, run, img, "left", (h, left), z)] if left else []
                parts += [out, self._background(ctx, run, img, "right", (h, nw - w - left), z)]
                out = torch.cat(parts, dim=-1)
            if nh > h:
                parts = [self._background(ctx, run, img, "top", (top, nw), z)] if top else []
                parts += [out, self._background(ctx, run, img, "bottom", (nh - h - top, nw), z)]
                out = torch.cat(parts, dim=-2)
            rows.append(out)
        return torch.stack(rows), (top, left)

    # ------------------------------------------------------------------ network calls
    def _call(self, ctx: StepContext, x: Tensor, embeds: PromptEmbeds, native: tuple[int, int],
              view: Callable[[], ControlView] | None = None) -> Tensor:
        # every call is a native-size image (SDXL: size conditioning = native, crop (0, 0)); a
        # ControlNet sees the canvas pixels the call's input came from (``view``), none in the padding
        cv = view() if view is not None and control.of(embeds) is not None else None
        return ctx.adapter.predict(x, ctx.t, embeds, Window.full(*native), **control.view_kwargs(cv))

    @staticmethod
    def _embeds(cond: Conditioning, images: list[int], which: str) -> PromptEmbeds:
        sel = select_cond(cond, images)
        return sel.negative if which == "negative" else sel.positive

    def _global(self, ctx: StepContext, run: _Run, x_in: Tensor, geo: Geometry, passes: int):
        """The class direction D (B, C, H, W), the last pass's (picks, ε_u, d) for RRG, and the first
        pass's ε_u."""
        b, c, hh, ww = x_in.shape
        h, w = geo.ref
        plans = upload(torch.stack([resampling_plan(hh, ww, geo.ref, passes, self.options.new_p, g)
                                    for g in run.picks[:b]]), x_in.device)  # (B, passes, h·w)
        flat = x_in.flatten(2)
        # pass-major: row k·B + i is pass k of image i
        z = torch.stack([flat[i][:, plans[i, k]] for k in range(passes) for i in range(b)]).view(passes * b, c, h, w)
        images = [i for _ in range(passes) for i in range(b)]
        cond = ctx.cond
        if self.options.batch_references:
            groups = [list(range(passes * b))]
        else:
            groups = [list(range(k * b, (k + 1) * b)) for k in range(passes)]
        eu, ec = torch.empty_like(z), torch.empty_like(z)
        for g in groups:
            imgs = [images[j] for j in g]
            zp, (top, left) = self._pad(ctx, run, z[g], imgs, geo.native)
            emb = self._embeds(cond, imgs, "negative").cat(self._embeds(cond, imgs, "positive"))

            def view(g=g, top=top, left=left):  # row k·B + i holds image i's pass-k picks
                idx = torch.stack([plans[j % b, j // b] for j in g]).view(len(g), h, w)
                return ControlView((hh, ww), pad_index(idx, geo.native, top, left)).repeat(2)

            out = self._call(ctx, torch.cat([zp, zp]), emb, geo.native, view)[..., top : top + h, left : left + w]
            eu[g], ec[g] = out.chunk(2)
        d = (ec.float() - eu.float()).view(passes, b, c, h * w)
        big = torch.zeros(b, c, hh * ww, device=x_in.device, dtype=torch.float32)
        written = torch.zeros(b, 1, hh * ww, device=x_in.device, dtype=torch.bool)
        for k in range(passes):  # later passes overwrite earlier ones at the pixels they picked
            idx = plans[:, k][:, None, :]
            big.scatter_(2, idx.expand(b, c, -1), d[k])
            written.scatter_(2, idx, True)
        last = d[-1].view(b, c, h, w)
        direction = torch.where(written, big, block_upsample(last, (hh, ww)).flatten(2)).view(b, c, hh, ww)
        return direction, (plans[:, -1], eu[(passes - 1) * b :], last), eu[:b]

    def _local(self, ctx: StepContext, run: _Run, x_in: Tensor, geo: Geometry, eu0: Tensor) -> Tensor:
        """The unconditional score of the whole canvas from native-size crops (cores kept)."""
        if geo.local_is_reference:  # the same network input as the first reference pass
            return eu0
        b, c, hh, ww = x_in.shape
        ch, cw = geo.crop
        out = torch.empty_like(x_in)
        jobs = [(i, r, q) for r in geo.rows for q in geo.cols for i in range(b)]
        per_call = self.options.view_batch_size * b
        for s in range(0, len(jobs), per_call):
            chunk = jobs[s : s + per_call]
            imgs = [i for i, _, _ in chunk]
            crops = torch.stack([x_in[i, :, r[2] : r[2] + ch, q[2] : q[2] + cw] for i, r, q in chunk])
            padded, (top, left) = self._pad(ctx, run, crops, imgs, geo.native)

            def view(chunk=chunk, top=top, left=left):
                idx = torch.stack([grid_index((hh, ww), r[2], q[2], 1, ch, cw, x_in.device) for _, r, q in chunk])
                return ControlView((hh, ww), pad_index(idx, geo.native, top, left))

            pred = self._call(ctx, padded, self._embeds(ctx.cond, imgs, "negative"), geo.native, view)
            pred = pred[..., top : top + ch, left : left + cw]
            for k, (i, r, q) in enumerate(chunk):
                out[i, :, r[0] : r[1], q[0] : q[1]] = pred[k, :, r[0] - r[2] : r[1] - r[2], q[0] - q[2] : q[1] - q[2]]
        return out

    def _guided(self, ctx: StepContext, run: _Run, x_in: Tensor, geo: Geometry, passes: int, scale: float):
        direction, ref, eu0 = self._global(ctx, run, x_in, geo, passes)
        local = self._local(ctx, run, x_in, geo, eu0)
        return local.float() + scale * direction, ref

    def _require_cfg(self, ctx: StepContext) -> None:
        if not ctx.cond.do_cfg:
            raise InvalidArgumentError(
                "elastic splits classifier-free guidance into its unconditional and class-direction terms, so it "
                f"needs guidance > 1 (got {ctx.cond.guidance_scale}); the official value is 10"
            )

    # ------------------------------------------------------------------ the step
    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        """The first-pass guided output (local score + w·direction), for composition."""
        self._require_cfg(ctx)
        run = self._run_state(ctx)
        geo = self.geometry(ctx.adapter, *x_in.shape[-2:])
        r, _ = self.settings(*x_in.shape[-2:], geo.native)
        out, _ = self._guided(ctx, run, x_in, geo, r + 1, ctx.cond.guidance_scale)
        return out.to(x_in.dtype)

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        self._require_cfg(ctx)
        o = self.options
        b, c, hh, ww = x.shape
        run = self._run_state(ctx)
        geo = self.geometry(ctx.adapter, hh, ww)
        r, lam0 = self.settings(hh, ww, geo.native)
        w = ctx.cond.guidance_scale
        ns = ctx.noise_space
        ptype = ctx.adapter.prediction_type
        out, ref = self._guided(ctx, run, ctx.model_input(x), geo, r + 1, w)
        out = out.to(x.dtype)
        scale = w
        if o.repaint and r > 0 and not ctx.is_last:
            t_next = ctx.timesteps[ctx.index + 1]
            x0 = ns.to_x0(x.float(), out.float(), ctx.t, ptype)
            proposal = ns.move(x.float(), x0, ctx.t, t_next)  # clips x0 as the scheduler's step does
            noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in run.renoise[:b]])
            x = ns.renoise(proposal, t_next, ctx.t, upload(noise, x.device)).to(x.dtype)
            scale = w / o.repaint_divisor
            out, ref = self._guided(ctx, run, ctx.model_input(x), geo, 1, scale)
            out = out.to(x.dtype)
        x_prev = ctx.scheduler_step(out, x)
        lam = rrg_weight(ctx.index, ctx.num_steps, lam0, o.cosine_scale, o.rrg_stop_t)
        if lam > RRG_MIN_WEIGHT:
            x_prev = x_prev + self._rrg(ctx, x, out, ref, scale, lam).to(x_prev.dtype)
        return x_prev

    def _rrg(self, ctx: StepContext, x: Tensor, out: Tensor, ref, scale: float, lam: float) -> Tensor:
        """Reduced-resolution guidance: -∂/∂x0̂ of λ·mean((x0̂ - U(x0_ref))²), in the model-input frame."""
        ns = ctx.noise_space
        ptype = ctx.adapter.prediction_type
        picks, eu, d = ref
        b, c, hh, ww = x.shape
        z = torch.stack([x[i].flatten(1)[:, picks[i]] for i in range(b)]).view(d.shape)  # the reference, unscaled
        # both estimates as the scheduler's step clips them (the official code takes both from DDIM's
        # pred_original_sample)
        x0_hat = ns.clip_x0(ns.to_x0(x.float(), out.float(), ctx.t, ptype))
        x0_ref = ns.clip_x0(ns.to_x0(z.float(), eu.float() + scale * d, ctx.t, ptype))
        delta = (2.0 * lam / (c * hh * ww)) * (block_upsample(x0_ref, (hh, ww)) - x0_hat)
        c_next = ns.input_scale(ctx.timesteps[ctx.index + 1]) if not ctx.is_last else 1.0
        return delta / c_next

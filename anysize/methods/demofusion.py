"""DemoFusion (Du et al., CVPR 2024): progressive upscaling with skip residuals, local views and
dilated sampling.

1. **Phase 1**: plain generation at the native size (the target's aspect ratio, native on the
   limiting side). Its mean and standard deviation are the run's anchor.
2. **Phases 2 … S** toward the target: the previous phase's clean latent ``z`` is upsampled
   (bicubic) to the phase's canvas and re-noised with one noise draw ``n`` to every timestep,
   ``z_t = a_t·z + b_t·n``. The loop starts from ``z_T`` and at every step t:

   * **skip residual**: ``x ← (1 − c1)·x + c1·z_t`` with ``c1 = cf^cosine_scale_1`` and the cosine
     factor ``cf = ½(1 + cos(π·(T − t)/T))`` (T: the training timesteps; 1 at the start, → 0 at the end);
   * **local path** (MultiDiffusion): native-size views every ``stride`` latent px, each shifted by
     a random jitter of up to ``(window − stride)/4`` px into a zero border, denoised and averaged;
   * **global path** (dilated sampling): the canvas, zero-padded at the top/left to a multiple of
     the dilation ``s``, is smoothed by a Gaussian of size ``2s − 1`` and std ``sigma·c3``
     (``c3 = 0.99·cf^cosine_scale_3 + 0.01``), renormalised to the unsmoothed mean and std, and cut
     into the ``s²`` interleaved sub-grids ``[dy::s, dx::s]``, each a native-size image;
   * **mix**: ``(1 − c2)·local + c2·global`` with ``c2 = cf^cosine_scale_2``, then one step.

   The phase's result is renormalised to the anchor's mean and std.

Phases grow linearly like the official code and the paper (phase k at k× the native size: 1×, 2×,
3×, 4× for a 4× target; ``max(2, round(scale))`` phases, the last at the exact target, so 2.44×
runs 1× then 2.44×) or, with ``progression="doubling"``, ×2 per phase (1×, 2×, 4×; ``round(log2
scale)`` doublings, as ScaleDiff's stages). A phase's dilation ``s`` is its scale over the native
size (rounded up when the last phase is not an integer multiple). Network calls per step of a phase: (local views + s²) per image (×2 with CFG), grouped
``view_batch_size`` views per call.

Families: all five. Every part applies to SD3 and FLUX as to the U-Nets: the re-noising, skip
residual and mixing are arithmetic on the scheduler's own x0 ↔ state conversion (flow: ``z_t =
(1 − σ)·z + σ·n``, and ``cf`` reads the flow timestep σ·T), the local views are windows, which the
DiT adapters take with their canvas positions (FLUX's RoPE ids, SD3's slice of its position table),
and the dilated views are native-size images. A DiT's windows must sit on its 2-latent-px token
grid, so there the stride, the jitter and its border are multiples of the patch (the jitter drawn in
patch units) and the dilated canvas is padded to a multiple of ``p·s`` so that every sub-grid is
whole tokens (p = 1 on the U-Nets: nothing changes there). Every phase after the first runs the
schedule of the native size, also where a flow model shifts its schedule by resolution (FLUX): each
network input is a native-size view, so the native shift is the one its training matches; phase 1
is plain generation at its own size. There is no official DiT code to compare with (the official
pipeline is SDXL's): the DiT runs are held to the method contract and to the token-grid and
call-count tests of ``tests/test_demofusion.py``.

Checked against the official code (PRIS-CV/DemoFusion ``pipeline_demofusion_sdxl.py`` at 5024487)
in ``benchmarks/demofusion_fidelity``: with its noise and jitter pinned, every phase's latents agree
to ≤ 1.4e-5 (tiny SDXL, 2×, 3× and 2:1; DDIM, and Euler once the official defect below is patched
out). Deliberate differences, each with a test in ``tests/test_demofusion.py``:

* The views' guided outputs are fused (local mean, then the c2 mix with the dilated outputs) and
  one scheduler step runs on the canvas, instead of one ``scheduler.step`` per view and averaging
  the stepped latents. Every view is stepped from the same state (the dilated views from the
  unsmoothed canvas), so the two are identical for steps affine in the model output at a fixed
  state: Euler (the official SDXL scheduler), DDIM η = 0, flow Euler
  (test_fusing_outputs_equals_averaging_stepped_views). Multistep schedulers get one history
  entry per step instead of one per view batch.
* Each view's model input is scaled for its own step. The official code, with the SDXL default
  Euler scheduler, scales every view batch after the first of a step with the *next* step's sigma
  (its per-view ``scheduler.step`` advances the step index read by ``scale_model_input``) and the
  first batch of phase 2 with sigma 0 (the index left at the end of phase 1), so its result
  depends on ``view_batch_size``; ours does not (test_view_batch_size_does_not_change_the_image).
* Any target size and aspect ratio: the last phase goes to the exact target (official: the long
  side a multiple of 1024 px, phases at integer multiples); the window is the native size clamped
  to the canvas on a short side (official: always the native size, which breaks below it); a
  non-integer last phase dilates by ``ceil(scale)`` so no dilated view is above the native size
  (test_any_size_and_ratio).
* Reproducible per image: the re-noising noise comes from the request's per-image generators, the
  view jitter from a generator per image seeded from that image's seed (official: the global
  ``torch`` and ``random`` RNGs, one jitter for the whole batch), and the anchor and smoothing
  statistics are per image (official: over the whole batch), so an image is the same alone or in
  a batch (test_batch_equals_alone_and_runs_repeat).
* SDXL size conditioning is anysize's window convention for every call (original size = the canvas
  the view is cut from, crop = its offset there, target = the view); the official code passes
  original = target = the final size in every phase and view (crop: the view's offset in the
  jitter-padded canvas, as here) (test_sdxl_views_are_conditioned_on_their_canvas).
* Only the final latents are returned and decoded by anysize's decoder, as for every method
  (official: every phase decoded, with its tiled "multi-decoder" by default); no method test, it is
  the library's output path.
* ``sigma`` defaults to 0.8, the value of the official README and demos (the pipeline's signature
  says 1.0) (test_defaults_are_the_officials).
* SD 1.x/2.x, SD3 and FLUX are supported (official: SDXL only;
  test_native_size_and_below_is_direct, test_dit_views_sit_on_the_token_grid);
  ``progression="doubling"`` and ``jitter=false`` are additions (test_doubling_progression,
  test_local_views_cover_the_canvas_and_jitter_without_it).
* ControlNet (not in the official code): a jittered view gets the crop of the control image under
  it (none in the zero border), a dilated view the control blocks of the latent pixels it samples,
  each phase the original image resized to its canvas
  (``tests/test_controlnet.py::test_demofusion_local_and_dilated_views_get_their_pixels_control``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..models import control
from ..models.base import Window
from ..models.control_pixels import ControlView, grid_index
from ..noise import timestep_value
from ..options import option
from ..sampling import StepContext
from ..tiling_grids import fusion_weights, overlap_origins
from ._windows import ImageWindow, fuse, latent_patch, select_cond, tile_size
from .base import Method, MethodOptions
from .registry import register
from .scalediff import cascade_scale, cascade_sizes

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

PROGRESSIONS = ("linear", "doubling")

#: added to an image's seed to seed its view-jitter generator (a stream separate from the noise)
_JITTER_SEED_SALT = 0xDE40F


@dataclasses.dataclass
class DemoFusionOptions(MethodOptions):
    cosine_scale_1: float = option(3.0, "skip residual: c1 = cf^cosine_scale_1 of the re-noised upsample mixed in "
                                        "at every step (larger: weaker, shorter)", low=0.0)
    cosine_scale_2: float = option(1.0, "dilated sampling's share c2 = cf^cosine_scale_2 of the mix with the local "
                                        "views (larger: less global guidance)", low=0.0)
    cosine_scale_3: float = option(1.0, "Gaussian smoothing of the dilated path: std sigma·(0.99·cf^cosine_scale_3 "
                                        "+ 0.01)", low=0.0)
    sigma: float = option(0.8, "std of the dilated path's Gaussian smoothing at the first step", low=0.0,
                          low_open=True, unit="latent px")
    stride: int | None = option(None, "distance between local view starts", kind="int", low=1, unit="latent px",
                                unset="half the window, the official 64 for SDXL's 128")
    jitter: bool = option(True, "shift every local view by a random jitter of up to (window - stride)/4 px "
                                "(official: on)")
    view_batch_size: int = option(16, "views per network call (each with all images of the batch)", low=1)
    progression: str = option("linear", "phase sizes: linear (phase k at k× native, the official) or doubling "
                                        "(×2 per phase)", choices=PROGRESSIONS)


@dataclasses.dataclass
class Phase:
    """One upscaling phase: what its sampling loop needs at every step (it gets it as ``ctx.extra``)."""

    label: str
    size: tuple[int, int]  # latent (h, w)
    dilation: int  # s: the dilated views are the s² sub-grids [dy::s, dx::s]
    start: Tensor  # z: the upsampled clean latent of the previous phase
    noise: Tensor  # n: the one noise draw it is re-noised with at every timestep
    jitter_generators: list  # one torch.Generator per image (the run's, never the method's)


def cosine_factor(ctx: StepContext) -> float:
    """cf = ½(1 + cos(π·(T − t)/T)) at this step (read from the host copy of the schedule)."""
    big_t = ctx.scheduler.config.num_train_timesteps
    t = timestep_value(ctx.t, ctx.timesteps)
    return 0.5 * (1.0 + math.cos(math.pi * (big_t - t) / big_t))


def draw_jitter(generator, low: int, high: int) -> int:
    """A uniform integer in [low, high] from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def axis_jitter(generator, start: int, end: int, length: int, limit: int, unit: int = 1) -> int:
    """A view's jitter along one axis, as the official code draws it: a view at a border only moves
    out, into the zero border, so the border stays covered (a view at both borders does not move,
    and draws nothing). ``unit``: the jitter is a multiple of it (a DiT's patch; ``limit`` is one too)."""
    first, last = start == 0, end == length
    reach = limit // unit
    if first and last or reach == 0:
        return 0
    return unit * draw_jitter(generator, 0 if last else -reach, 0 if first else reach)


def gaussian_smooth(x: Tensor, size: int, std: float) -> Tensor:
    """Per-channel 2-D Gaussian blur (size×size, zero padding), then rescaled per image to the
    mean and std of ``x``."""
    r = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * std * std))
    g = g / g.sum()
    c = x.shape[1]
    kernel = (g[:, None] * g[None, :]).to(x.dtype).expand(c, 1, size, size)
    blurred = F.conv2d(x, kernel, padding=size // 2, groups=c)
    dims = (1, 2, 3)
    return ((blurred - blurred.mean(dims, keepdim=True)) / blurred.std(dims, keepdim=True)
            * x.std(dims, keepdim=True) + x.mean(dims, keepdim=True))


def match_statistics(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``x`` rescaled per image to ``mean`` and ``std`` (each (B, 1, 1, 1))."""
    dims = (1, 2, 3)
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True) * std + mean


@register
class DemoFusion(Method):
    name = "demofusion"
    summary = "progressive upscaling with skip residuals, jittered local views and dilated sampling (DemoFusion)"
    Options = DemoFusionOptions
    refines = False  # its phases start from its own native-size first phase

    @classmethod
    def demo_options(cls, adapter) -> dict:
        # the window as stride: 4 local views instead of 9 at 4x area (jitter range 0)
        return {"stride": min(adapter.native_latent_size)}

    # ------------------------------------------------------------------ geometry
    def phase_sizes(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        """Latent (h, w) of every phase; the first is the native base, the last the target."""
        scale = cascade_scale(adapter, height, width)
        if scale <= 1:
            return [(height, width)]
        if self.options.progression == "doubling":
            multiples = [2**k for k in range(max(1, round(math.log2(scale))))]
        else:
            multiples = list(range(1, max(2, round(scale))))
        return cascade_sizes(adapter, height, width, multiples)

    def dilation(self, adapter, size: tuple[int, int]) -> int:
        """s of a phase: its scale over the native size, rounded up (at most native-size dilated views)."""
        return max(1, math.ceil(cascade_scale(adapter, *size) - 1e-6))

    def views(self, adapter, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """((window h, w), (stride h, w), (jitter range h, w)) of the local views, in latent px, all
        multiples of the token patch (1 on the U-Nets)."""
        p = latent_patch(adapter)
        th, tw = tile_size(adapter, None, height, width, "window")
        stride = self.options.stride
        if stride is None:
            strides = (max(p, th // 2 // p * p), max(p, tw // 2 // p * p))
        else:
            if stride > min(th, tw):
                raise InvalidArgumentError(f"demofusion stride {stride} is larger than the local view "
                                           f"({th}x{tw} latent px): pixels would be skipped")
            if stride % p:
                raise InvalidArgumentError(f"demofusion stride {stride} must be a multiple of {p} latent pixels "
                                           f"for {adapter.family} (its token grid)")
            strides = (stride, stride)
        if not self.options.jitter:
            return (th, tw), strides, (0, 0)
        return (th, tw), strides, ((th - strides[0]) // 4 // p * p, (tw - strides[1]) // 4 // p * p)

    def geometry(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        sizes = self.phase_sizes(adapter, height, width)
        for size in sizes[1:]:
            self.views(adapter, *size)
        return sizes

    # ------------------------------------------------------------------ the phases
    def run(self, request) -> Tensor:
        adapter = request.adapter
        f = adapter.vae_factor
        sizes = self.phase_sizes(adapter, *request.latent_hw)
        base = sizes[0]
        if len(sizes) == 1:  # at or below the native size: plain generation
            return Method.run(self, request)
        z = Method.run(self, dataclasses.replace(request, height=base[0] * f, width=base[1] * f),
                       stage=f"phase 1/{len(sizes)}")
        dims = (1, 2, 3)
        anchor_mean, anchor_std = z.mean(dims, keepdim=True), z.std(dims, keepdim=True)
        jitter = [torch.Generator("cpu").manual_seed((s + _JITTER_SEED_SALT) % 2**63) for s in request.seeds]
        for k, size in enumerate(sizes[1:], start=2):
            phase = self.phase(request, z, size, jitter, label=f"phase {k}/{len(sizes)}")
            z = match_statistics(self.denoise_phase(request, phase), anchor_mean, anchor_std)
        return z

    def phase(self, request, z: Tensor, size: tuple[int, int], jitter_generators: list, *, label: str = "") -> Phase:
        """The phase to latent ``size`` from the previous phase's clean latents ``z``."""
        adapter = request.adapter
        start = F.interpolate(z, size=size, mode="bicubic")
        noise = adapter.initial_noise(tuple(start.shape), request.generators)
        return Phase(label, size, self.dilation(adapter, size), start.to(noise.dtype), noise, jitter_generators)

    def denoise_phase(self, request, phase: Phase) -> Tensor:
        """The phase's loop from its upsample re-noised to the first timestep."""
        adapter = request.adapter
        scheduler = request.make_scheduler()
        timesteps = adapter.set_timesteps(scheduler, request.steps, tuple(adapter.native_latent_size))
        x = adapter.from_x0(scheduler, phase.start, phase.noise, timesteps[:1])
        return self.denoise(request, x, scheduler, timesteps, stage=phase.label, extra=phase)

    # ------------------------------------------------------------------ one step
    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        phase: Phase | None = ctx.extra  # None in phase 1
        if phase is None:
            return ctx.scheduler_step(ctx.adapter.predict_guided(ctx.model_input(x), ctx.t, ctx.cond), x)
        o = self.options
        cf = cosine_factor(ctx)
        c1, c2, c3 = cf**o.cosine_scale_1, cf**o.cosine_scale_2, 0.99 * cf**o.cosine_scale_3 + 0.01
        renoised = ctx.adapter.from_x0(ctx.scheduler, phase.start, phase.noise, ctx.t)
        x = x * (1 - c1) + renoised * c1  # skip residual
        x_in = ctx.model_input(x)
        local = self.local_views(ctx, x_in, phase)
        dilated = self.dilated_views(ctx, x_in, phase.dilation, o.sigma * c3)
        out = (local * (1 - c2) + dilated * c2).to(x.dtype)
        return ctx.scheduler_step(out, x)

    def local_views(self, ctx: StepContext, x_in: Tensor, phase: Phase) -> Tensor:
        """MultiDiffusion: the mean guided output of the jittered native-size views."""
        b, _, h, w = x_in.shape
        (th, tw), (sh, sw), (jh, jw) = self.views(ctx.adapter, h, w)
        padded = F.pad(x_in, (jw, jw, jh, jh))  # the jitter may move a border view into zeros
        canvas = (h + 2 * jh, w + 2 * jw)
        places = [(r, c) for r in overlap_origins(h, th, sh) for c in overlap_origins(w, tw, sw)]
        p = latent_patch(ctx.adapter)
        windows = []
        for i in range(b):
            gen = phase.jitter_generators[i]
            for r, c in places:
                dx = axis_jitter(gen, c, c + tw, w, jw, p)  # the official order: across, then down
                dy = axis_jitter(gen, r, r + th, h, jh, p)
                windows.append(ImageWindow(i, Window(r + dy + jh, c + dx + jw, th, tw, canvas)))
        weights = {(th, tw): fusion_weights(th, tw, "uniform", device=x_in.device)}
        num, den = fuse(ctx, padded, windows, self.options.view_batch_size * b, weights, frame=(jh, jw))
        return (num / den)[..., jh : jh + h, jw : jw + w]

    def dilated_views(self, ctx: StepContext, x_in: Tensor, s: int, std: float) -> Tensor:
        """Dilated sampling: the guided outputs of the s² smoothed sub-grids, put back in place."""
        b, c, h, w = x_in.shape
        unit = s * latent_patch(ctx.adapter)  # every sub-grid whole tokens on a DiT
        ph, pw = -h % unit, -w % unit
        padded = F.pad(x_in, (pw, 0, ph, 0))  # to a multiple of s (p·s), at the top/left
        smooth = gaussian_smooth(padded, 2 * s - 1, std)
        grids = [(dy, dx) for dy in range(s) for dx in range(s)]
        out = torch.zeros(padded.shape, device=x_in.device, dtype=torch.float32)
        per_call = self.options.view_batch_size
        for k in range(0, len(grids), per_call):
            call = grids[k : k + per_call]
            views = torch.cat([smooth[:, :, dy::s, dx::s] for dy, dx in call])
            cond = select_cond(ctx.cond, list(range(b)) * len(call))
            view = None
            if control.in_run(ctx.cond):  # a sub-grid's control: the blocks of its pixels
                vh, vw = views.shape[-2:]
                view = ControlView((h, w), torch.stack([grid_index((h, w), dy - ph, dx - pw, s, vh, vw, views.device)
                                                        for dy, dx in call for _ in range(b)]))
            pred = ctx.adapter.predict_guided(views, ctx.t, cond, **control.view_kwargs(view))
            for (dy, dx), part in zip(call, pred.float().split(b)):
                out[:, :, dy::s, dx::s] = part
        return out[..., ph:, pw:]

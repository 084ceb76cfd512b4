"""I-Max (Du et al. 2024, arXiv 2410.07536, "Maximize the Resolution Potential of Pre-trained
Rectified Flow Transformers with Projected Flow"): native-resolution guidance and a projected flow.

1. **Native-resolution stage**: plain generation at the target divided by ``k = round(s)``, with
   ``s = √(target area / native area)`` (the target's aspect ratio, about the native area; each
   side rounded down to the size multiple, as the official code), on a schedule with the static
   flow shift ``time_shift_1``, the network under the I-Max patch with ``ntk_factor`` 1 (which only
   acts when this canvas has fewer tokens than the native one: see :mod:`anysize.patches.imax`).
2. **Guidance**: its latents are decoded, the image upsampled (bicubic) to the target and encoded
   again (a posterior sample): the guidance latents ``g``.
3. **High-resolution stage**: from fresh noise at the target, ``steps_2`` steps on a schedule with
   the static shift ``time_shift_2``, the distilled guidance ``guidance_2``, the network under the
   I-Max patch (NTK-aware RoPE ``ntk_factor`` floored by position interpolation, proportional
   attention, text duplication). At step i of N, with the model's velocity ``v`` at state ``x``
   and the velocity that carries ``x`` straight onto the guidance, ``v_g = (x − g)/σ`` (x's
   flow toward g), the **projected flow** is, with ``c = ½(1 + cos(π·i/N))`` and ``LP`` the Haar
   wavelet low-pass of ``dwt_level`` levels (approximation kept, details zeroed):

   * ``cosine_shift`` (the official pipeline's default): ``v + c·(v_g − v) + (1 − c)·LP(v_g − v)``;
   * ``cosine_decay`` (the official README's and demo's choice): ``v + c·LP(v_g − v)``;
   * ``constant``: ``v + LP(v_g − v)``; ``disable``: ``v``.

   With ``swin_patchify`` every even step runs the network (and the projection) on the canvas
   padded by one latent px of zeros on every side, which moves the 2x2 token grid by half a
   token; its border is cropped before the scheduler step. A ControlNet then sees the canvas's
   control framed by a border without control, like DemoFusion's jittered views.

Network calls: ``steps`` per image in stage 1 and ``steps_2`` per image in stage 2, plus one VAE
decode and one encode.

Families: FLUX only. The projected flow and the time shifts would apply to SD3 (a flow model too),
but I-Max's network changes are RoPE changes (NTK scaling, the position-interpolation floor, text
copies placed in RoPE space) and SD3's positions are a learned/sin-cos table added once at the
patch embedding, so the method as the official code defines it does not exist there: refused.

Checked against the official code (PRIS-CV/I-Max ``pipeline_flux_imax.py`` + ``transformer_flux.py``
+ ``attention_processor.py`` at 3b38c11) in ``benchmarks/imax_fidelity``: with its noises and VAE
sample pinned (tiny FLUX told its native size is 1024 px, 2048², 1536², 3072x1024, every guidance
schedule), stage 1 and the guidance latents are identical and the final latents agree to ≤ 8.6e-6,
once the official time shifts take effect (see below). Deliberate differences, each with a test in
``tests/test_imax.py``:

* At or below the native area the run is plain generation (no stage 2) with the model's own
  schedule, so imax reduces to ``direct`` there; the official code runs both stages at the native
  size, and divides by zero below half of it (test_at_or_below_the_native_area_it_is_direct).
* The official constants are the model's: the native resolution (official 1024 px), the native
  token grid and count (64 x 64, 4096) from the adapter's native size, the text length (512) from
  the prompt's actual length, so a FLUX-architecture model of another base size gets the same rules
  (test_the_constants_are_the_adapters_native_size).
* ``steps_2`` defaults to the run's step count (official: 20 after 30; pass ``steps=30,
  steps_2=20`` to match) (test_defaults_are_the_officials).
* Reproducible per image: the VAE posterior sample and both noises come from the request's
  per-image generators (official: the noises from the pipeline's generator, the posterior sample
  from the global RNG), so an image is the same alone or in a batch
  (test_batch_equals_alone_and_runs_repeat).
* The time shifts go through a fresh scheduler built with ``shift`` and ``use_dynamic_shifting``
  off, for every flow scheduler (official: it assigns ``scheduler.config.shift``, which only the
  diffusers of its time reads in ``set_timesteps``; with today's diffusers it silently keeps the
  scheduler's own shift) (test_the_time_shifts_set_both_schedules).
* The swin-padded step's output is cropped before the scheduler step (official: the padded
  latents are stepped and cropped at the next step, the same for an elementwise step; with an odd
  step count the official run ends padded, 2 latent px larger than asked; here always the target)
  (test_swin_patchify_pads_every_even_step_and_ends_at_the_target).
* ``v_g = (x − g)/σ`` exactly (official: ``/(σ + 1e-6)``; σ ≥ the last sigma of the schedule > 0)
  (test_the_projection_target_is_the_flow_to_the_guidance).
* The Haar low-pass is torch code on the device (official: ``pywt`` on the host, per channel), the
  same numbers (an approximation at level L is the mean of 2^L x 2^L blocks, odd sizes extended
  symmetrically as pywt does), and odd sizes work (official: a shape error)
  (test_the_haar_lowpass_is_pywts).
* The guidance image is upsampled in float32 and decoded / encoded by anysize's VAE path, tiled
  only above a size (official: in the VAE's dtype, always diffusers' tiled VAE); no method test,
  it is the library's VAE path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..models import control
from ..models.base import Window
from ..options import option
from ..patches.imax import IMaxPatch
from ..sampling import StepContext
from ._windows import framed_view
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

GUIDANCE_SCHEDULES = ("cosine_shift", "cosine_decay", "constant", "disable")


@dataclasses.dataclass
class IMaxOptions(MethodOptions):
    steps_2: int | None = option(None, "steps of the high-resolution stage", kind="int", low=1,
                                 unset="the run's steps (official: 20, after 30)")
    guidance_2: float = option(7.0, "FLUX distilled guidance of the high-resolution stage (the run's guidance is "
                                    "the native stage's)", low=0.0)
    time_shift_1: float = option(3.0, "static flow shift of the native-resolution stage's schedule", low=0.0,
                                 low_open=True)
    time_shift_2: float = option(6.0, "static flow shift of the high-resolution stage's schedule", low=0.0,
                                 low_open=True)
    ntk_factor: float = option(10.0, "NTK-aware RoPE: the rotary base θ is multiplied by it in the high-resolution "
                                     "stage (floored by position interpolation)", low=1.0)
    guidance_schedule: str = option("cosine_shift", "how the flow is projected onto the guidance's: cosine_shift "
                                                    "(all bands, then the low band), cosine_decay (the low band, "
                                                    "decaying), constant (the low band) or disable",
                                    choices=GUIDANCE_SCHEDULES)
    dwt_level: int = option(1, "levels of the Haar wavelet low-pass of the projection", low=1, high=8)
    proportional_attention: bool = option(True, "attention scale √(log_{native tokens}(tokens)/d) in the "
                                                "high-resolution stage")
    text_duplication: bool = option(True, "one copy of the prompt tokens per native-size region, placed there in "
                                          "RoPE space, in the high-resolution stage")
    swin_patchify: bool = option(True, "every other high-resolution step on the canvas padded by one latent px "
                                       "(the token grid moved by half a token)")
    vae_sample: bool = option(True, "encode the upsampled guidance image with a seeded posterior sample like the "
                                    "official code (false: the mode)")


@dataclasses.dataclass
class HighRes:
    """The high-resolution stage: what its sampling loop needs at every step (``ctx.extra``)."""

    guide: Tensor  # g: the upsampled native-resolution result, re-encoded


def haar_lowpass(x: Tensor, level: int) -> Tensor:
    """The Haar wavelet reconstruction of ``x`` (…, H, W) from its level-``level`` approximation
    alone (``pywt.waverec2`` of ``wavedec2(x, 'haar', level=level)`` with the details zeroed):
    each level averages 2x2 blocks (an odd side extended by its last row/column, pywt's symmetric
    mode for a 2-tap filter) and the reconstruction repeats each value over its block, cropped back
    to the sizes of the way down."""
    sizes = []
    a = x
    for _ in range(level):
        h, w = a.shape[-2:]
        sizes.append((h, w))
        if h % 2 or w % 2:
            a = F.pad(a, (0, w % 2, 0, h % 2), mode="replicate")
        a = F.avg_pool2d(a, 2)
    for h, w in reversed(sizes):
        a = a.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return a


def guidance_weight(index: int, steps: int) -> float:
    """c = ½(1 + cos(π·i/N)) at step i of N: 1 at the first step, decaying toward 0."""
    return 0.5 * (1.0 + math.cos(math.pi * index / steps))


def project(v: Tensor, v_guide: Tensor, weight: float, schedule: str, level: int) -> Tensor:
    """The projected flow from the model's velocity ``v`` and the velocity toward the guidance."""
    if schedule == "disable":
        return v
    delta = v_guide - v
    low = haar_lowpass(delta, level)
    if schedule == "cosine_decay":
        return v + weight * low
    if schedule == "cosine_shift":
        return v + weight * delta + (1.0 - weight) * low
    if schedule == "constant":
        return v + low
    raise InvalidArgumentError(f"unknown imax guidance_schedule {schedule!r}; choose one of {', '.join(GUIDANCE_SCHEDULES)}")


def flow_to(x: Tensor, target: Tensor, coefficients: tuple[float, float]) -> Tensor:
    """The flow velocity (noise − x0) whose clean estimate at state ``x = a·x0 + b·n`` is ``target``:
    ``(x − a·target)/b − target``, i.e. ``(x − target)/σ`` for flow states (never divides by a,
    which is 0 at the first step)."""
    a, b = coefficients
    return (x - a * target) / b - target


@register
class IMax(Method):
    name = "imax"
    summary = "native-resolution guidance and projected flow, NTK-aware RoPE and time shifts (I-Max, FLUX)"
    Options = IMaxOptions
    families = ("flux",)
    refines = False  # its high-resolution stage starts from its own native-resolution stage

    # ------------------------------------------------------------------ geometry
    def stage_sizes(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        """Latent (h, w) of the native-resolution stage and of the target (one entry: plain)."""
        nh, nw = adapter.native_latent_size
        scale = math.sqrt(height * width / (nh * nw))
        if scale <= 1:
            return [(height, width)]
        k = int(scale + 0.5)
        m = max(1, adapter.size_multiple // adapter.vae_factor)
        base = (max(m, height // k // m * m), max(m, width // k // m * m))
        return [base, (height, width)]

    def geometry(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        return self.stage_sizes(adapter, height, width)

    # ------------------------------------------------------------------ the stages
    def run(self, request) -> Tensor:
        adapter = request.adapter
        sizes = self.stage_sizes(adapter, *request.latent_hw)
        if len(sizes) == 1:  # at or below the native area: plain generation
            return Method.run(self, request)
        f = adapter.vae_factor
        base = sizes[0]
        z = self.native_stage(dataclasses.replace(request, height=base[0] * f, width=base[1] * f))
        return self.high_res_stage(request, self.guidance(request, z))

    def shifted_scheduler(self, request, shift: float):
        """A fresh scheduler of the run's kind with the static flow shift ``shift``."""
        scheduler = request.make_scheduler()
        if "shift" not in scheduler.config:
            raise InvalidArgumentError(
                f"imax needs a flow scheduler with a static shift, not {type(scheduler).__name__}; "
                f"choose flow_euler or flow_heun"
            )
        return type(scheduler).from_config(scheduler.config, shift=float(shift), use_dynamic_shifting=False)

    def native_stage(self, request) -> Tensor:
        """Stage 1 on the request's (native-area) canvas, shift ``time_shift_1``."""
        adapter = request.adapter
        scheduler = self.shifted_scheduler(request, self.options.time_shift_1)
        h, w = request.latent_hw
        timesteps = adapter.set_timesteps(scheduler, request.steps, (h, w))
        latents = adapter.initial_noise((request.cond.batch, adapter.latent_channels, h, w), request.generators)
        with IMaxPatch(adapter, ntk_factor=1.0):
            return self.denoise(request, latents, scheduler, timesteps, stage="native resolution")

    def guidance(self, request, z: Tensor) -> Tensor:
        """g: the stage-1 latents decoded, upsampled (bicubic) to the target, encoded again."""
        adapter = request.adapter
        x = adapter.decode(z, progress=False)
        x_up = F.interpolate(x.float(), size=(request.height, request.width), mode="bicubic", align_corners=False)
        # one encode per image with that image's generator: the same seed, the same image in any batch
        return torch.cat([
            adapter.encode(x_up[i : i + 1], generator=request.generators[i], sample=self.options.vae_sample)
            for i in range(x_up.shape[0])
        ])

    def high_res_cond(self, cond):
        """The conditioning with the distilled guidance ``guidance_2`` (unchanged without one)."""
        pos = cond.positive
        if "guidance" not in pos.extra:
            return cond
        g = float(self.options.guidance_2)
        extra = {**pos.extra, "guidance": torch.full_like(pos.extra["guidance"], g)}
        return dataclasses.replace(cond, positive=dataclasses.replace(pos, extra=extra), network_guidance=g)

    def high_res_stage(self, request, guide: Tensor) -> Tensor:
        """Stage 2 from fresh noise at the target, projected onto ``guide``, shift ``time_shift_2``."""
        adapter, o = request.adapter, self.options
        scheduler = self.shifted_scheduler(request, o.time_shift_2)
        h, w = request.latent_hw
        steps = request.steps if o.steps_2 is None else o.steps_2
        timesteps = adapter.set_timesteps(scheduler, steps, (h, w))
        latents = adapter.initial_noise((request.cond.batch, adapter.latent_channels, h, w), request.generators)
        stage = dataclasses.replace(request, cond=self.high_res_cond(request.cond))
        with IMaxPatch(adapter, ntk_factor=o.ntk_factor, proportional_attention=o.proportional_attention,
                       text_duplication=o.text_duplication):
            return self.denoise(stage, latents, scheduler, timesteps, stage="high resolution",
                                extra=HighRes(guide.to(latents.dtype)))

    # ------------------------------------------------------------------ one step
    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        high: HighRes | None = ctx.extra  # None in stage 1
        if high is None:
            return ctx.scheduler_step(ctx.adapter.predict_guided(ctx.model_input(x), ctx.t, ctx.cond), x)
        o = self.options
        padded = o.swin_patchify and ctx.index % 2 == 0
        xs, guide = (F.pad(x, (1, 1, 1, 1)), F.pad(high.guide, (1, 1, 1, 1))) if padded else (x, high.guide)
        view = None
        if padded and control.in_run(ctx.cond):  # a ControlNet sees the canvas's control, none in the border
            view = ctx.state.get("swin_view")
            if view is None:
                h, w = x.shape[-2:]
                view = ctx.state["swin_view"] = framed_view([Window.full(h + 2, w + 2)] * x.shape[0], (1, 1), x.device)
        v = ctx.adapter.predict_guided(ctx.model_input(xs), ctx.t, ctx.cond, **control.view_kwargs(view))
        v_guide = flow_to(xs, guide, ctx.noise_space.coefficients(ctx.t))
        out = project(v, v_guide.to(v.dtype), guidance_weight(ctx.index, ctx.num_steps), o.guidance_schedule,
                      o.dwt_level)
        if padded:
            out = out[..., 1:-1, 1:-1]
        return ctx.scheduler_step(out, x)

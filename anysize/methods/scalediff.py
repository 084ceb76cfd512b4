"""ScaleDiff (Koh et al., NeurIPS 2025, arXiv 2510.25818): an SDEdit cascade with Neighborhood Patch
Attention, Latent Frequency Mixing and Structure Guidance.

1. Generate at the native size (the target's aspect ratio, native on the limiting side), plain.
2. Upscale ×2 per stage until the target; the last stage goes to the exact target size (any size
   and aspect ratio; ``P = round(log2(scale))`` stages, at least one). Each stage:

   * **LFM** reference: ``Z_ref = HP_f(E(up_rgb(x))) + LP_f(up_lat(z))`` — the low band of the
     bicubic latent upsample, the high band of the VAE re-encoding of the bicubic pixel upsample;
     ``LP_f`` = bilinear antialiased down-sampling by ``cutoff`` and bilinear up-sampling back.
   * Re-noise ``Z_ref`` to step ``i0 = int(N·(1 − restart))`` of the N-step schedule (the official
     rule, :func:`restart_index`) and denoise the tail from there with the network under the
     ``npa`` patch (:mod:`anysize.patches.npa`).
   * **Structure Guidance** at every step: ``x0 ← x0 + γ_t · (LP_f(Z_ref) − LP_f(x0))`` on the
     predicted clean latent, converted back into the model's own output (ε, v or flow velocity)
     through the scheduler's tables, so every scheduler and parametrisation works.

Defaults follow the official code per family: U-Nets (SDXL code; SD 1.x/2.x take the same)
restart 0.4, cutoff 0.125, ``γ_t = (1−ᾱ_t)/(1−ᾱ_τ)`` ("alpha"), no query shift; FLUX restart 0.6,
cutoff 0.25, ``γ_t = σ_t`` ("sigma"), query shift on (the official code's default); SD3 (not in the
paper) is a flow model like FLUX and takes FLUX's settings except the query shift (off).

Kept from the official code although the generic img2img path would differ:

* The restart index is the official ``int(N·(1 − restart))``, computed in the same floating point,
  for every family (diffusers' img2img pipelines keep ``int(N·restart)`` steps on U-Nets and skip
  ``int(N − N·restart)`` on SD3/FLUX, which differ from it): restart 0.4 of 50 steps re-runs 20,
  0.6 of 30 re-runs 18, 0.4 of 3 re-runs 2, 0.4 of 7 re-runs 3, and where ``1 − restart`` is not
  exact in binary 0.8 of 10 re-runs 9, 0.8 of 30 re-runs 25, 0.9 of 50 re-runs 46 and 0.55 of 60
  re-runs 34, as in the official code (test_the_restart_index_is_the_officials).
* A flow model's resolution shift ``mu`` is pinned at one token count for the base pass and every
  stage alike (official FLUX: 4096 tokens for any base size); a partial schedule shifted for the
  stage's own, much larger size would start from almost pure noise. At or below the native size
  (no stage) the run is plain generation with its own shift.

Deliberate differences from the official code (each has a test in tests/test_scalediff.py):

* Reproducible: the re-noising noise and the VAE posterior sample come from the request's per-image
  generators (seeded from each image's seed), the query shifts from generators seeded the same
  way (official: the global RNG for both), so the same seed gives the same image, alone or in a
  batch.
* Any target size and aspect ratio: ``round(log2 scale)`` stages of ×2, the last to the exact
  size (official: square 1024 base, exactly ×2 per stage); at or below the native size no stage
  runs and the result is plain generation.
* The γ schedules are written with the scheduler's own coefficients ``x = a·x0 + b·n``:
  "alpha" ``= v_t / v_τ`` with ``v = b²/(a²+b²)`` (``= 1−ᾱ`` for VP and VE states), "sigma" ``=
  b/(a+b)`` (``= σ_t`` for flow), so both work for every scheduler (official: SDXL "alpha" from the
  DDPM table, FLUX "sigma" from the flow sigmas).
* SDXL's size conditioning at a stage is that stage's canvas (original = target = stage size, the
  stock pipeline's value for that size); the official code keeps the base (1024, 1024, 0, 0, 1024,
  1024).
* SD 1.x/2.x and SD3 are supported (not in the paper or the code), with the defaults above; SD3
  canvases beyond its position table get the table's sin-cos formula extended outward (see
  :mod:`anysize.patches.npa`; the spec's option (a), untested on the real model's quality).
* The pinned token count of the flow shift is the model's native one (``native_latent_size``;
  official: the constant 4096, which is FLUX.1's native 1024² canvas, so the two agree for FLUX.1
  at every target, square or not)
  (test_the_flow_shift_is_the_native_sizes_in_the_base_pass_and_every_stage).
* A non-square target's base is native on the target's limiting side (the base never extends past
  the native canvas, e.g. 64x128 px for a 2:1 target of a 128-px model); the official code only
  runs square 1024² bases.

The step count is the request's (``--steps``): anysize's FLUX default is 28, the official FLUX runs use
30 (pass ``steps=30`` to match); SDXL's 50 is the same.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..options import option
from ..patches.npa import NPAPatch
from ..sampling import StepContext
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

#: family -> (restart, cutoff, sg_schedule, query_shift)
FAMILY_DEFAULTS: dict[str, tuple[float, float, str, bool]] = {
    "sd1": (0.4, 0.125, "alpha", False),
    "sd2": (0.4, 0.125, "alpha", False),
    "sdxl": (0.4, 0.125, "alpha", False),
    "sd3": (0.6, 0.25, "sigma", False),
    "flux": (0.6, 0.25, "sigma", True),
}
SG_SCHEDULES = ("alpha", "sigma")


@dataclasses.dataclass
class ScaleDiffOptions(MethodOptions):
    restart: float | None = option(None, "fraction of the schedule re-run by each upscaling stage", kind="float",
                                   low=0.0, high=1.0, low_open=True, unset="0.4 for U-Nets, 0.6 for SD3/FLUX")
    cutoff: float | None = option(None, "LFM / SG low-pass cutoff as a fraction of the latent size", kind="float",
                                  low=0.0, high=1.0, low_open=True, high_open=True,
                                  unset="0.125 for U-Nets, 0.25 for SD3/FLUX")
    sg_scale: float = option(1.0, "multiplies the Structure Guidance weight γ_t (0: no guidance)", low=0.0, high=10.0)
    sg_schedule: str | None = option(None, "the SG weight: alpha ((1-ᾱ_t)/(1-ᾱ_τ)) or sigma (σ_t)",
                                     choices=SG_SCHEDULES, unset="alpha for U-Nets, sigma for SD3/FLUX")
    lfm: bool = option(True, "Latent Frequency Mixing (false: the re-encoded pixel upsample alone is the reference)")
    npa: bool = option(True, "Neighborhood Patch Attention in the upscaling stages (false: full attention)")
    query_shift: bool | None = option(None, "random query shift of NPA", kind="bool", unset="on for FLUX only")
    npa_chunk: int | None = option(None, "NPA patches per attention call (bounds memory at very large sizes)",
                                   kind="int", low=1, unset="all at once")
    stages: int | None = option(None, "upscaling stages", kind="int", low=1,
                                unset="round(log2(target / native)), at least one above the native size")
    vae_sample: bool = option(True, "encode the pixel upsample with a seeded posterior sample like the official "
                                    "code (false: the mode)")


def restart_index(steps: int, restart: float) -> int:
    """The step of an N-step schedule the upscaling stages restart from: the official
    ``int(N·(1 − restart))``, in the same floating point (so 0.8 of 10 steps gives 1, not 2)."""
    return int(steps * (1 - restart))


def check_restart(steps: int, restart: float) -> int:
    """:func:`restart_index`, refusing a restart whose stages would run no step (before any work)."""
    skipped = restart_index(steps, restart)
    if skipped >= steps:
        raise InvalidArgumentError(
            f"scalediff restart {restart} of {steps} steps re-runs no step in the upscaling stages "
            f"(int(steps·(1 − restart)) = {skipped}); use a larger restart or more steps"
        )
    return skipped


def stage_schedule(adapter, scheduler, steps: int, restart: float) -> tuple[Tensor, int]:
    """(timesteps, begin) of an upscaling stage: ``steps`` steps set on ``scheduler`` as for the
    model's native size (a flow model's resolution shift pinned there), from
    :func:`restart_index` on (``begin`` counts the scheduler's sub-steps, e.g. Heun's two)."""
    skipped = check_restart(steps, restart)
    timesteps = adapter.set_timesteps(scheduler, steps, tuple(adapter.native_latent_size))
    begin = skipped * getattr(scheduler, "order", 1)
    return timesteps[begin:], begin


def lowpass(x: Tensor, cutoff: float) -> Tensor:
    """LP_f: bilinear antialiased down-sampling to ``int(f·H) x int(f·W)``, bilinear up-sampling back."""
    h, w = x.shape[-2:]
    small = (max(1, int(h * cutoff)), max(1, int(w * cutoff)))
    down = F.interpolate(x.float(), size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


def frequency_mix(z_latent_up: Tensor, z_pixel_up: Tensor, cutoff: float) -> Tensor:
    """LFM: the low band of the latent upsample plus the high band of the re-encoded pixel upsample."""
    # the bands' difference first: identical inputs give the input back exactly
    return (z_pixel_up.float() + (lowpass(z_latent_up, cutoff) - lowpass(z_pixel_up, cutoff))).to(z_pixel_up.dtype)


def structure_guidance(x0: Tensor, ref_low: Tensor, weight: float, cutoff: float) -> Tensor:
    """SG: pull the low band of the clean estimate toward the reference's low band ``ref_low``."""
    if weight == 0:
        return x0
    return (x0.float() + weight * (ref_low - lowpass(x0, cutoff))).to(x0.dtype)


def sg_weight(schedule: str, coeff_t: tuple[float, float], coeff_tau: tuple[float, float]) -> float:
    """γ_t from the state coefficients (a, b), x = a·x0 + b·n, at t and at the stage start τ."""
    a, b = coeff_t
    if schedule == "sigma":
        return b / (a + b)
    a0, b0 = coeff_tau
    v, v0 = b * b / (a * a + b * b), b0 * b0 / (a0 * a0 + b0 * b0)
    return v / v0 if v0 > 0 else 0.0


def cascade_scale(adapter, height: int, width: int) -> float:
    """How many times the native latent size a height×width latent target is, on its limiting side."""
    nh, nw = adapter.native_latent_size
    return max(height / nh, width / nw)


def cascade_sizes(adapter, height: int, width: int, multiples: list[float]) -> list[tuple[int, int]]:
    """Latent (h, w) of a cascade's canvases toward a height×width latent target: the base (the
    target's aspect ratio, native on the limiting side) times each of ``multiples`` (from 1 up),
    rounded to the model's latent patch, then the target itself; a size equal to the previous one
    or to the target ends the list there."""
    scale = cascade_scale(adapter, height, width)
    m = max(1, adapter.size_multiple // adapter.vae_factor)

    def rnd(v: float, limit: int) -> int:
        return min(limit, max(m, int(round(v / m)) * m))

    sizes: list[tuple[int, int]] = []
    for k in multiples:
        size = (rnd(height / scale * k, height), rnd(width / scale * k, width))
        if sizes and size == sizes[-1] or size == (height, width):
            break
        sizes.append(size)
    return sizes + [(height, width)]


@dataclasses.dataclass
class Stage:
    """One upscaling stage: what its sampling loop needs at every step (it gets it as ``ctx.extra``)."""

    label: str
    size: tuple[int, int]  # latent (h, w)
    reference: Tensor  # Z_ref
    ref_low: Tensor  # LP_f(Z_ref), the target of Structure Guidance
    cutoff: float
    sg_schedule: str
    scheduler: Any
    timesteps: Tensor
    begin: int  # where the tail starts in the scheduler's schedule
    tau: tuple[float, float]  # state coefficients (a, b) at the stage's first step
    #: γ_t of every step run so far (for inspection)
    weights: list[float] = dataclasses.field(default_factory=list)


@register
class ScaleDiff(Method):
    name = "scalediff"
    summary = "SDEdit cascade ×2 per stage with neighborhood patch attention, LFM and structure guidance (ScaleDiff)"
    Options = ScaleDiffOptions
    refines = False  # its stages start from its own native-size base image

    # ------------------------------------------------------------------ settings
    def settings(self, adapter) -> dict[str, Any]:
        """The options with the family's defaults filled in."""
        restart, cutoff, schedule, shift = FAMILY_DEFAULTS[adapter.family]
        o = self.options
        return {
            "restart": restart if o.restart is None else float(o.restart),
            "cutoff": cutoff if o.cutoff is None else float(o.cutoff),
            "sg_schedule": schedule if o.sg_schedule is None else o.sg_schedule,
            "query_shift": shift if o.query_shift is None else o.query_shift,
        }

    def stage_sizes(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        """Latent (h, w) of the base and of every upscaling stage; the last is the target."""
        scale = cascade_scale(adapter, height, width)
        if scale <= 1:
            return [(height, width)]
        stages = self.options.stages or max(1, round(math.log2(scale)))
        return cascade_sizes(adapter, height, width, [2**k for k in range(stages)])

    def geometry(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        return self.stage_sizes(adapter, height, width)

    def check(self, adapter, height: int, width: int, steps: int | None = None) -> None:
        super().check(adapter, height, width, steps)
        f = adapter.vae_factor
        sizes = self.stage_sizes(adapter, height // f, width // f)
        asked = self.options.stages
        if asked is not None and len(sizes) > 1 and len(sizes) - 1 < asked:  # not run with fewer, unsaid
            raise InvalidArgumentError(
                f"scalediff stages={asked}: a {width}x{height} image has room for {len(sizes) - 1} upscaling "
                f"stage{'s' if len(sizes) > 2 else ''} of x2 above its native-size base; use stages <= "
                f"{len(sizes) - 1}, or leave it unset")
        if steps is not None and len(sizes) > 1:
            check_restart(steps, self.settings(adapter)["restart"])
        if self.options.npa:  # the stages run inside the patch (which extends SD3's position table)
            NPAPatch.check_canvas(adapter, (height // f, width // f))
        else:
            adapter.check_positions(height, width, remedy="npa=true")

    # ------------------------------------------------------------------ the cascade
    def run(self, request) -> Tensor:
        return self.cascade(request)[0]

    def cascade(self, request) -> tuple[Tensor, list[Stage]]:
        """The final latents and the upscaling stages that made them (their references and SG weights)."""
        adapter = request.adapter
        f = adapter.vae_factor
        sizes = self.stage_sizes(adapter, *request.latent_hw)
        base = sizes[0]
        if len(sizes) == 1:  # at or below the native size: plain generation
            return Method.run(self, request), []
        check_restart(request.steps, self.settings(adapter)["restart"])  # before any work
        z = self.base_pass(dataclasses.replace(request, height=base[0] * f, width=base[1] * f), stage="base")
        stages = []
        for p, size in enumerate(sizes[1:], start=1):
            stage = self.stage(request, z, size, label=f"stage {p}/{len(sizes) - 1}")
            z = self.upscale_stage(request, stage)
            stages.append(stage)
        return z, stages

    def reference(self, request, z: Tensor, size: tuple[int, int], cutoff: float) -> Tensor:
        """Z_ref for a stage of latent ``size`` from the previous stage's latents ``z``."""
        adapter = request.adapter
        f = adapter.vae_factor
        x = adapter.decode(z, progress=False)
        x_up = F.interpolate(x.float(), size=(size[0] * f, size[1] * f), mode="bicubic", align_corners=False)
        # one encode per image with that image's generator: the same seed, the same image in any batch
        z_pixel = torch.cat([
            adapter.encode(x_up[i : i + 1], generator=request.generators[i], sample=self.options.vae_sample)
            for i in range(x_up.shape[0])
        ]).float()
        if not self.options.lfm:
            return z_pixel
        z_latent = F.interpolate(z.float(), size=size, mode="bicubic", align_corners=False)
        return frequency_mix(z_latent, z_pixel, cutoff)

    def base_pass(self, request, *, stage: str = "") -> Tensor:
        """The base image of a cascade: one loop from pure noise on the request's (base) canvas, its
        schedule set as for the native size (a flow model's shift pinned there, as the stages')."""
        adapter = request.adapter
        scheduler = request.make_scheduler()
        h, w = request.latent_hw
        timesteps = adapter.set_timesteps(scheduler, request.steps, tuple(adapter.native_latent_size))
        latents = adapter.initial_noise((request.cond.batch, adapter.latent_channels, h, w), request.generators)
        latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)
        return self.denoise(request, latents, scheduler, timesteps, stage=stage)

    def _schedule(self, request):
        """(scheduler, timesteps, begin index) of a stage (:func:`stage_schedule`)."""
        restart = self.settings(request.adapter)["restart"]
        scheduler = request.make_scheduler()
        timesteps, begin = stage_schedule(request.adapter, scheduler, request.steps, restart)
        return scheduler, timesteps, begin

    def stage(self, request, z: Tensor, size: tuple[int, int], *, label: str = "") -> Stage:
        """The upscaling stage to latent ``size`` from the previous stage's latents ``z``."""
        s = self.settings(request.adapter)
        ref = self.reference(request, z, size, s["cutoff"])
        scheduler, timesteps, begin = self._schedule(request)
        tau = request.adapter.noise_space(scheduler).coefficients(timesteps[0])
        return Stage(label, size, ref, lowpass(ref, s["cutoff"]), s["cutoff"], s["sg_schedule"], scheduler, timesteps,
                     begin, tau)

    def upscale_stage(self, request, stage: Stage) -> Tensor:
        """Re-noise the stage's reference to its first step and denoise the tail (inside NPA)."""
        adapter = request.adapter
        noise = adapter.initial_noise(tuple(stage.reference.shape), request.generators)
        x = adapter.from_x0(stage.scheduler, stage.reference.to(noise.dtype), noise, stage.timesteps[:1])
        loop = dict(begin_index=stage.begin, stage=stage.label, extra=stage)
        if not self.options.npa:
            return self.denoise(request, x, stage.scheduler, stage.timesteps, **loop)
        shift = self.settings(adapter)["query_shift"]
        with NPAPatch(adapter, seed=list(request.seeds), shift=shift, chunk=self.options.npa_chunk) as patch:
            patch.cover(stage.size)  # SD3 beyond its position table: the adapter checks before the network runs
            return self.denoise(request, x, stage.scheduler, stage.timesteps, **loop)

    # ------------------------------------------------------------------ one step
    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        return ctx.adapter.predict_guided(x_in, ctx.t, ctx.cond)

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        out = self.predict(ctx, ctx.model_input(x))
        stage: Stage | None = ctx.extra  # None in the base pass
        if stage is not None:
            ns = ctx.noise_space
            weight = self.options.sg_scale * sg_weight(stage.sg_schedule, ns.coefficients(ctx.t), stage.tau)
            stage.weights.append(weight)
            if weight != 0:
                out = self.guide(ctx, x, out, weight, stage.ref_low, stage.cutoff)
        return ctx.scheduler_step(out, x)

    def guide(self, ctx: StepContext, x: Tensor, out: Tensor, weight: float, ref_low: Tensor, cutoff: float) -> Tensor:
        """The model output whose clean estimate is the structure-guided one (toward ``ref_low``)."""
        ns, ptype = ctx.noise_space, ctx.adapter.prediction_type
        xf = x.float()
        x0 = structure_guidance(ns.to_x0(xf, out.float(), ctx.t, ptype), ref_low, weight, cutoff)
        return ns.output_from_x0(xf, x0, ctx.t, ptype).to(out.dtype)

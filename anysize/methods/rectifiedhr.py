"""RectifiedHR (Yang et al., arXiv 2503.02537): noise refresh and energy rectification.

One schedule of N steps is cut into ``phases`` (P) runs of consecutive steps; the canvas grows from
phase to phase toward the target, and the classifier-free guidance scale rises with it.

1. **Phase 1** runs the first ``T_1`` steps from pure noise on the base canvas: the target's
   aspect ratio at about the model's native area (official: ``res_min``, e.g. 1024² for 2048²,
   768x1536 for 2048x4096).
2. **Noise refresh**, before each later phase p: the clean estimate x0 predicted at the previous
   phase's last step is resized to the phase's canvas (``resize="pixel"``, the official path:
   VAE decode, 8-bit image, bicubic resize, VAE encode of the posterior mean; or
   ``resize="latent"``: bicubic on the latent, no VAE round trip), re-noised with a *fresh* noise
   draw to the phase's first timestep ``t[T_p]`` (``x = a·x0 + b·n``, the scheduler's own
   coefficients), and the phase runs steps ``T_p … T_{p+1} − 1`` of the same schedule. A phase of
   the same size as the previous one refreshes without resizing.
3. **Energy rectification**: phase p runs with CFG scale ``g_p = g + (g_max − g)·(p/(P−1))^guidance_power``
   (g: the run's guidance, official 5; g_max official 30 or 50), the refresh steps are
   ``T_p = int((N − T_1)·(p/(P−1))^refresh_power + T_1)`` (``T_1 = round(refresh_start·N)``) and the
   phases' short sides grow linearly from the base's to the target's, the long side at the target's
   ratio, each rounded up to the model's latent size multiple (the last is the exact target).

The defaults are the official configurations (``configs_sdxl.py``), chosen by how many times the
native side the target is (``s = sqrt(target area / native area)``): up to 2 its 2048² config (2
phases, g_max 30, ``T_1 = 0.6·N``, powers 1); below 4 its 2048x4096 config (3 phases, g_max 50,
``T_1 = 0.8·N``, powers 1); from 4 its 4096² config (the same with both powers 0.5). At or below
the native area the run is plain generation (one phase) unless ``phases`` is given; with too few
steps for the config's phases (e.g. 3 phases of 4 steps: refresh steps 3 and 3) the default drops
phases until each has a step, while an explicit ``phases`` is refused. Network calls
per step: one per image (two with CFG), on the phase's canvas.

Families: all. The official code has an SDXL pipeline (DDIM) and a Wan 2.1 one (a flow model:
flow-match Euler, x0 = x − σ·v, re-noised with ``scale_noise``), so the refresh applies to SD3 and
FLUX too. The guidance ramp needs classifier-free guidance: on a run without it (FLUX.1, which is
guidance-distilled, or ``guidance`` ≤ 1) the phases run at the run's own conditioning and giving
``guidance_max`` is refused. The schedule of every phase is set as for the model's native size (a
flow model's resolution shift pinned there, as in ScaleDiff), so one step index is one timestep in
every phase (the official Wan schedule has no resolution shift). Schedulers taking two network calls
per step (heun, flow_heun) are refused: a refresh sits between two steps.

Checked against the official code (EnVision-Research/RectifiedHR ``pipelines/pipeline_sdxl.py``,
``run_sdxl.py``, ``utils/main_tools.py`` at e1331b7) in ``benchmarks/rectifiedhr_fidelity``: with the randomness pinned and the VAE round trip in float32
on both sides, every phase's latents are bit-identical (tiny SDXL, DDIM, 2x, 3x, 4x, 1:2 and 5:3).
Deliberate differences, each with a test in ``tests/test_rectifiedhr.py``:

* The phases are cut at exactly the refresh steps ``T_p`` for any step count and scheduler
  (official: ``denoising_end = T_p/N`` through the pipeline's timestep cutoff, which cuts at
  ``T_p`` for DDIM's 50 steps but a step earlier for e.g. 30) (test_calls_per_phase).
* The first phase's noise is scaled by the scheduler's ``init_noise_sigma`` (official: passed as
  ``latents`` unscaled, right only for DDIM, the scheduler it sets), so phase 1 is plain
  generation on the base canvas with every scheduler (test_phase_one_is_plain_generation_on_the_base).
* The clean estimate is converted from the guided model output through the scheduler's tables
  (official: DDIM's ``pred_original_sample``, the same formula) and the VAE runs in the pipeline's
  own dtype (official: the whole pipeline cast to bfloat16 for the round trip, which also leaves
  its weights rounded to bfloat16 for the later phases) and tiles as anysize's decoder does above a
  size (official: diffusers' ``enable_tiling``) (test_refresh_renoises_the_resized_clean_estimate;
  the numbers: ``benchmarks/rectifiedhr_fidelity``).
* Any target size and aspect ratio: the base is derived from the model's native area and the
  target's ratio (official: ``res_min`` given per target in the config); the last phase is the exact
  target (official: ``next_multiple_of_8(short·ratio)``, one multiple too long where the float ratio
  rounds up, e.g. 88x200 px comes out 88x208); a phase is resized when its size, not only its width, differs (test_any_size_and_ratio).
* Reproducible per image: the first noise and every refresh's noise come from each image's own
  generator, in that order (official: one generator for its batch of one), so an image is the same
  alone or in a batch (the registry's contract test; test_refresh_draws_fresh_noise_per_image).
* The defaults depend on the target's scale (official: one config file edited per target; the
  three configs above are its presets) and ``g`` is the run's guidance (official: ``cfg_min`` 5, the
  SDXL guidance) (test_defaults_are_the_official_configs).
* SDXL's size conditioning is the phase's canvas (original = target = the phase size, crop 0), as
  the official pipeline computes it from the latents it is given; no difference.
* The Wan pipeline's resize is bilinear (cv2); every family here takes the SDXL code's bicubic.
  ``resize="latent"`` is an addition for quick previews, and the ``anysize demo`` sheet's setting
  (test_latent_resize_skips_the_vae).

Limit of the official 8-bit round trip (``resize="pixel"``): a float rounding difference before it
(an image generated in a batch, whose prompts are encoded together, against the same image alone)
can move a few pixels of the 8-bit image by one level, which the later phases' high CFG amplifies:
12 of 49920 levels and 5e-3 in the final latents on the tiny SD3 at CFG 30, where other methods
agree to 1e-5. ``resize="latent"`` has no such step
(test_pixel_refresh_batch_and_alone_differ_by_8_bit_levels_only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..options import option
from ..sampling import StepContext
from .base import Method, MethodOptions
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
np = lazy_module("numpy")

RESIZES = ("pixel", "latent")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One official configuration (``configs_sdxl.py``), with the step fraction of its ``T_min``."""

    name: str
    phases: int  # N
    guidance_max: float  # cfg_max
    guidance_power: float  # M_cfg
    refresh_start: float  # T_min / num_inference_steps
    refresh_power: float  # M_T


#: the official configs, in order of the target scale (over the native side) they are for
PRESETS = (
    Preset("2048x2048", 2, 30.0, 1.0, 0.6, 1.0),
    Preset("2048x4096", 3, 50.0, 1.0, 0.8, 1.0),
    Preset("4096x4096", 3, 50.0, 0.5, 0.8, 0.5),
)


def preset_for(scale: float) -> Preset:
    """The official config of a target ``scale`` times the native side: up to 2 the 2048² one,
    below 4 the 2048x4096 one (scale 2.8), from 4 the 4096² one."""
    if scale <= 2 + 1e-9:
        return PRESETS[0]
    return PRESETS[1] if scale < 4 - 1e-9 else PRESETS[2]


def area_scale(adapter, height: int, width: int) -> float:
    """sqrt(target area / native area), latent sizes."""
    nh, nw = adapter.native_latent_size
    return math.sqrt(height * width / (nh * nw))


def refresh_steps(steps: int, phases: int, start: float, power: float) -> list[int]:
    """``[0, T_1, …, T_{P-1}, N]``: where each phase starts, then the step count (the official
    ``quantic_step`` with ``T_min = round(start·N)``, ``T_max = N``, in the same floating point)."""
    if phases == 1:
        return [0, steps]
    t_min = round(start * steps)
    xs = [i / (phases - 1) for i in range(phases)]
    return [0] + [int((steps - t_min) * (x**power) + t_min) for x in xs]


def guidance_scales(low: float, high: float, phases: int, power: float) -> list[float]:
    """The CFG scale of each phase (the official ``quantic_cfg``)."""
    if phases == 1:
        return [low]
    return [(high - low) * ((i / (phases - 1)) ** power) + low for i in range(phases)]


def phase_sizes(adapter, height: int, width: int, phases: int) -> list[tuple[int, int]]:
    """Latent (h, w) of every phase toward a height×width latent target: the short side linear from
    the base's (the target's ratio at the native area) to the target's, the long side at the
    target's ratio, both rounded up to the latent size multiple; the last is the target."""
    if phases == 1:
        return [(height, width)]
    m = max(1, adapter.size_multiple // adapter.vae_factor)
    nh, nw = adapter.native_latent_size
    short, long = min(height, width), max(height, width)
    ratio = long / short

    def up(v: float, limit: int) -> int:
        return min(limit, max(m, math.ceil(v / m - 1e-9) * m))

    base = min(short, max(m, round(math.sqrt(nh * nw / ratio) / m) * m))
    sizes = []
    for i in range(phases - 1):
        s = (short - base) * (i / (phases - 1)) + base
        a, b = up(s, short), up(s * ratio, long)
        sizes.append((a, b) if height <= width else (b, a))
    return sizes + [(height, width)]


@dataclasses.dataclass
class RectifiedHROptions(MethodOptions):
    phases: int | None = option(None, "resolution phases (each after the first starts with a noise refresh)",
                                kind="int", low=1, high=16,
                                unset="1 at or below the native area, else the official config's: 2 up to 2x "
                                      "the native side, 3 above (fewer if the steps cannot give each a step)")
    guidance_max: float | None = option(None, "CFG scale of the last phase: the scale rises from the run's "
                                              "guidance to it (energy rectification)", kind="float", low=0.0,
                                        unset="30 up to 2x the native side, 50 above (official configs)")
    guidance_power: float | None = option(None, "curve of the guidance ramp g + (max - g)·(p/(P-1))^power",
                                          kind="float", low=0.0, low_open=True,
                                          unset="1; 0.5 from 4x the native side (official 4096² config)")
    refresh_start: float | None = option(None, "fraction of the steps run by the first phase (official "
                                               "T_min / steps)", kind="float", low=0.0, high=1.0, low_open=True,
                                         high_open=True, unset="0.6 up to 2x the native side, 0.8 above")
    refresh_power: float | None = option(None, "curve of the refresh steps T_p = (N - T_1)·(p/(P-1))^power + T_1",
                                         kind="float", low=0.0, low_open=True,
                                         unset="1; 0.5 from 4x the native side (official 4096² config)")
    resize: str = option("pixel", "how a clean estimate grows to the next phase: pixel (VAE decode, bicubic "
                                  "resize of the 8-bit image, encode; the official) or latent (bicubic on the "
                                  "latent, no VAE)", choices=RESIZES)


@dataclasses.dataclass
class Plan:
    """What a run does, phase by phase (sizes in latent px)."""

    sizes: list[tuple[int, int]]
    bounds: list[int]  # [0, T_1, …, N]: phase p runs steps bounds[p] … bounds[p+1] - 1
    guidance: list[float]


@dataclasses.dataclass
class Phase:
    """One phase's loop: it gets this as ``ctx.extra`` and leaves its last clean estimate here."""

    label: str
    last_x0: Tensor | None = None


@register
class RectifiedHR(Method):
    name = "rectifiedhr"
    summary = "noise refresh with progressive resizing and a rising CFG scale (RectifiedHR)"
    Options = RectifiedHROptions
    refines = False  # its phases start from its own base canvas

    @classmethod
    def demo_options(cls, adapter) -> dict:
        # no VAE round trip per refresh: a share of a toy cell's time (the defaults cost less than
        # direct too), and no 8-bit image whose rounding a batch can flip (see the docstring)
        return {"resize": "latent"}

    # ------------------------------------------------------------------ settings
    def settings(self, adapter, height: int, width: int) -> dict[str, Any]:
        """The options with the official config of this latent target filled in."""
        scale = area_scale(adapter, height, width)
        p, o = preset_for(scale), self.options
        default_phases = 1 if scale <= 1 + 1e-9 else p.phases
        return {
            "phases": default_phases if o.phases is None else o.phases,
            "guidance_max": p.guidance_max if o.guidance_max is None else float(o.guidance_max),
            "guidance_power": p.guidance_power if o.guidance_power is None else float(o.guidance_power),
            "refresh_start": p.refresh_start if o.refresh_start is None else float(o.refresh_start),
            "refresh_power": p.refresh_power if o.refresh_power is None else float(o.refresh_power),
        }

    def plan(self, adapter, height: int, width: int, steps: int, guidance: float) -> Plan:
        """The phases of a latent height×width target in ``steps`` steps at the run's ``guidance``."""
        s = self.settings(adapter, height, width)
        n = s["phases"]
        bounds = refresh_steps(steps, n, s["refresh_start"], s["refresh_power"])
        empty = [p + 1 for p in range(n) if bounds[p + 1] <= bounds[p]]
        while empty and self.options.phases is None and n > 1:  # the default: as many phases as the steps allow
            n -= 1
            bounds = refresh_steps(steps, n, s["refresh_start"], s["refresh_power"])
            empty = [p + 1 for p in range(n) if bounds[p + 1] <= bounds[p]]
        if empty:
            raise InvalidArgumentError(
                f"rectifiedhr: {n} phases of {steps} steps (refresh steps {bounds[1:-1]}) leave phase "
                f"{empty[0]} without a step; use more steps, fewer phases or another refresh_start"
            )
        return Plan(phase_sizes(adapter, height, width, n), bounds,
                    guidance_scales(guidance, s["guidance_max"], n, s["guidance_power"]))

    def geometry(self, adapter, height: int, width: int) -> list[tuple[int, int]]:
        return phase_sizes(adapter, height, width, self.settings(adapter, height, width)["phases"])

    def check(self, adapter, height: int, width: int, steps: int | None = None) -> None:
        super().check(adapter, height, width, steps)
        # the last phase is one whole-canvas call: refuse an SD3 canvas beyond its table before phase 1 runs
        adapter.check_positions(height, width, remedy="a tiling method (rectifiedhr's last phase is the whole canvas)")
        if steps is not None:
            f = adapter.vae_factor
            self.plan(adapter, height // f, width // f, steps, 1.0)

    # ------------------------------------------------------------------ the phases
    def run(self, request) -> Tensor:
        adapter = request.adapter
        plan = self.plan(adapter, *request.latent_hw, request.steps, request.guidance)
        if len(plan.sizes) == 1:
            return Method.run(self, request)  # one phase: plain generation at the target
        cond = request.cond
        if not cond.do_cfg and self.options.guidance_max is not None:
            raise InvalidArgumentError(
                "rectifiedhr guidance_max needs classifier-free guidance, which this run has not "
                f"(the {adapter.family} model with guidance {request.guidance:g}); drop guidance_max"
            )
        probe = request.make_scheduler()
        order = getattr(probe, "order", 1)
        if order != 1:
            raise InvalidArgumentError(
                f"rectifiedhr refreshes the noise between two steps; scheduler {request.scheduler or type(probe).__name__!r} takes "
                f"{order} network calls per step: use a one-call scheduler (euler, ddim, dpm++2m, ...)"
            )
        x, x0 = None, None
        for p, (size, scale) in enumerate(zip(plan.sizes, plan.guidance)):
            phase = Phase(f"phase {p + 1}/{len(plan.sizes)}")
            scheduler = request.make_scheduler()
            full = adapter.set_timesteps(scheduler, request.steps, tuple(adapter.native_latent_size))
            # the last phase runs to the schedule's end (PNDM's holds one entry more than its steps)
            begin, end = plan.bounds[p], (plan.bounds[p + 1] if p < len(plan.sizes) - 1 else len(full))
            if p == 0:
                x = adapter.initial_noise((cond.batch, adapter.latent_channels, *size), request.generators)
                x = x * getattr(scheduler, "init_noise_sigma", 1.0)
            else:
                x0 = self.resize(request, x0, size)
                noise = adapter.initial_noise(tuple(x0.shape), request.generators)  # fresh, per image
                x = adapter.from_x0(scheduler, x0.to(noise.dtype), noise, full[begin : begin + 1])
            phase_request = dataclasses.replace(request, cond=dataclasses.replace(cond, guidance_scale=scale)) \
                if cond.do_cfg else request
            x = self.denoise(phase_request, x, scheduler, full[begin:end], begin_index=begin, stage=phase.label,
                             extra=phase)
            x0 = phase.last_x0
        return x

    def resize(self, request, x0: Tensor, size: tuple[int, int]) -> Tensor:
        """The clean latents ``x0`` on a latent canvas of ``size``."""
        if tuple(x0.shape[-2:]) == tuple(size):
            return x0
        if self.options.resize == "latent":
            return F.interpolate(x0.float(), size=size, mode="bicubic", align_corners=False).to(x0.dtype)
        from PIL import Image

        adapter = request.adapter
        f = adapter.vae_factor
        images = adapter.decode(x0, progress=False)
        out = []
        for img in images:
            # the official 8-bit round trip: [0, 1] * 255 truncated, PIL bicubic, / 127.5 - 1
            u8 = ((img.float() / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            big = Image.fromarray(u8).resize((size[1] * f, size[0] * f), Image.BICUBIC)
            pixels = torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            out.append(adapter.encode(pixels.to(adapter.device), sample=False))
        return torch.cat(out).to(x0.dtype)

    # ------------------------------------------------------------------ one step
    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        return ctx.adapter.predict_guided(x_in, ctx.t, ctx.cond)

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        out = self.predict(ctx, ctx.model_input(x))
        phase: Phase | None = ctx.extra  # None in a one-phase run
        if phase is not None and ctx.is_last:
            # what the next phase refreshes from: the clean estimate at this phase's last step
            phase.last_x0 = ctx.noise_space.to_x0(x, out, ctx.t, ctx.adapter.prediction_type)
        return ctx.scheduler_step(out, x)

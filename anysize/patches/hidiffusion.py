"""HiDiffusion (RAU-Net + MSW-MSA) as one reversible patch on a U-Net.

Zhang et al., "HiDiffusion: Unlocking Higher-Resolution Creativity and Efficiency in Pretrained
Diffusion Models", ECCV 2024 (arXiv 2311.17528); official code megvii-research/HiDiffusion, PyPI
``hidiffusion`` 0.1.10, which this module reproduces numerically (tests/test_hidiffusion_parity.py).

    with anysize.patch(pipe, "hidiffusion"):          # a stock diffusers pipeline
        image = pipe(prompt, height=2048, width=2048).images[0]

    with anysize.patch(adapter, "hidiffusion"):       # around any anysize method
        anysize.generate(adapter, prompt, width=512, height=512, method="direct")

Per-family settings (defaults = the official package; "scale" = the shorter latent side over the
model's native latent side, so 4 means 2048 px for SD 1.5 and 4096 px for SDXL):

===========  ==========================  ===========================  ===========================
family       primary operator (``t1``)   extra operator (``t2``)      windowed attention
===========  ==========================  ===========================  ===========================
sd1, sd2     RAD on ``down_blocks.0``    pool in ``down_blocks.1`` /  all transformer blocks of
             (t1 0.4; 0.7 at scale>=4)   un-pool in ``up_blocks.2``   ``down_blocks.0`` and
                                         (t2 0; 0.3 at scale>=4)      ``up_blocks.3``
sdxl         pool in ``down_blocks.1`` / RAD on ``down_blocks.1``     all transformer blocks of
             un-pool in ``up_blocks.1``  (t2 0; 0.3 at scale>=4)      ``down_blocks.1`` and
             (t1 0.4; 0.7 at scale>=4)   aggressive below scale 4:    ``up_blocks.1``
                                         RAD for the first 8/50 of
                                         the steps, pool after it
===========  ==========================  ===========================  ===========================

An operator with fraction ``f`` is active for the first ``int(f * N)`` of the N executed steps.
The patch is handed the step position by one callable (:mod:`anysize.patches.steps`): anysize's
sampling loop provides :func:`anysize.sampling.current_step` (the steps of the executed schedule,
so an img2img/partial schedule counts from its first executed step, however many network calls a
method makes per step); a stock pipeline gets a :class:`~anysize.patches.steps.PipelineStepTracker`
(N counts its network calls per image, e.g. 2n-1 for Heun, exactly like the official package).
Neither reads a tensor, so on a GPU the host never waits for the device.
Windowed attention: a ``windows x windows`` grid (2x2) over the map, rolled by ``k * (window //
shift_choices)`` with ``k`` uniform in ``0..shift_choices-1`` (4), drawn per block call.

Deliberate differences from hidiffusion 0.1.10 (all other behaviour is reproduced):

* At or below the native size (the latent fits in the native latent) nothing is changed, so the
  method reduces to plain generation there, as the paper intends (RAU-Net exists to bring deep
  features back to the training size); the package shrinks even native-size features and
  windows native-size attention. ``apply_at_native=True`` restores the package's behaviour.
* The profile switch is relative to the model's native size (scale >= 4) instead of absolute
  latent sizes (256 / 512), which is the same for SD 1.5 / SDXL but also right for SD 2.x-768,
  the toy model and fine-tunes with other native sizes; the model type comes from the family,
  not from the checkpoint name or a list of module names.
* Window shifts come by default from generators seeded from each image's seed
  (``shift_source="random"``; one generator per image of a batch, shared by its CFG halves), so
  the same seed gives the same image, alone or in a batch, without touching the global RNG; the
  package draws one shift per block call for the whole batch from the global RNG.
  ``shift_source="global"`` draws ``torch.rand(1)`` from the global RNG exactly like the package
  (one draw per windowed block call, in execution order), for parity checks.
* A shift with zero rows but non-zero columns (windows shorter than ``shift_choices`` rows, very
  wide images) is applied; the package skips the whole roll then.
* The step position restarts with every run (fixes the package's stale counters after an
  interrupted run), and is one position for the U-Net, not one counter per patched module.
* Leaving the context restores the U-Net exactly, including ``num_upsamplers`` (the package
  leaves it raised by 12), and refuses unsupported models before changing anything.
* Odd feature sizes: windows use the package's bicubic resize to whole windows and back; the
  RAU-Net operators round up (ceil) like the package, so every size divisible by the VAE factor
  runs, at any aspect ratio. SDXL ControlNet pipelines, whose ``__call__`` the package replaces,
  are not special-cased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..options import Options, option
from ..seeds import seed_list
from ._undo import ReversiblePatch, Undo
from .msw_msa import WindowAttentionProcessor, feature_hw, shift_index
from .raunet import DilatedDownsampler, PoolUnpool
from .steps import StepSource

torch = lazy_module("torch")
nn = lazy_module("torch.nn")

SHIFT_SOURCES = ("random", "global", "none")
FAMILIES = ("sd1", "sd2", "sdxl")

#: per family: which operator the ``t1`` fraction drives, block indices, and the defaults
#: (t1, t2, aggressive) below and at/above ``extreme_scale``
FAMILY_PROFILES: dict[str, dict[str, Any]] = {
    "sd1": dict(primary="rad", rad_block=0, pool_block=1, window_block=0, low=(0.4, 0.0, False), high=(0.7, 0.3, False)),
    "sd2": dict(primary="rad", rad_block=0, pool_block=1, window_block=0, low=(0.4, 0.0, False), high=(0.7, 0.3, False)),
    "sdxl": dict(primary="pool", rad_block=1, pool_block=1, window_block=1, low=(0.4, 0.0, True), high=(0.7, 0.3, False)),
}


@dataclass
class HiDiffusionSettings(Options):
    """Settings of the HiDiffusion patch; unset means the family's default (table above)."""

    raunet: bool = option(True, "RAU-Net (both of its operators)")
    msw_msa: bool = option(True, "windowed attention (MSW-MSA)")
    t1: float | None = option(None, "fraction of the steps the primary RAU-Net operator runs", kind="float",
                              low=0.0, high=1.0, unset="the family's: 0.4, or 0.7 from extreme_scale on")
    t2: float | None = option(None, "fraction of the steps the extra RAU-Net operator runs", kind="float",
                              low=0.0, high=1.0, unset="the family's: 0, or 0.3 from extreme_scale on")
    aggressive: bool | None = option(None, "SDXL below extreme_scale: extra RAD for the first aggressive_start of "
                                           "the steps, then the pool for the rest of t1", kind="bool",
                                     unset="on for SDXL below extreme_scale")
    aggressive_start: float = option(8 / 50, "fraction of the steps the aggressive RAD runs", low=0.0, high=1.0)
    extreme_scale: float = option(4.0, "shorter-side scale over native from which the (0.7, 0.3) profile is used",
                                  low=1.0, low_open=True)
    windows: int = option(2, "windows per side of the windowed attention (2: four windows)", low=1)
    shift_choices: int = option(4, "number of window shifts per axis", low=1)
    shift_source: str = option("random", "window shifts: random (seeded per image), global (torch.rand, as the "
                                         "official package) or none", choices=SHIFT_SOURCES, callable_ok=True)
    apply_at_native: bool = option(False, "also change the U-Net at or below the native size (the official package does)")
    rad_block: int | None = option(None, "down-block level of the RAD operator", kind="int", low=0,
                                   unset="the family's")
    pool_block: int | None = option(None, "down-block level of the pool operator", kind="int", low=0,
                                    unset="the family's")
    window_block: int | None = option(None, "down-block level of the windowed attention", kind="int", low=0,
                                      unset="the family's")


def raunet_phase(primary: str, k: int, n: int, t1: float, t2: float, aggressive: bool, aggressive_start: float):
    """(rad_on, pool_on) at step ``k`` of ``n``, with the official package's integer thresholds."""
    if primary == "rad":
        return k < int(n * t1), k < int(n * t2)
    if aggressive:
        start = int(aggressive_start * n)
        return k < start, start <= k < int(n * t1)
    return k < int(n * t2), k < int(n * t1)


class HiDiffusionPatch(ReversiblePatch):
    """The reversible HiDiffusion change of one adapter's U-Net; a context manager (see module docstring).

    ``position`` is the loop's step source (needed with RAU-Net on). ``seed`` seeds the window-shift generator (``shift_source="random"``); a list of seeds gives
    every image of a batch its own generator (row r of a U-Net batch, which may hold the
    [negative; positive] CFG halves, is image ``r % len(seed)``), so an image of a batch is the
    same as that image generated alone. A callable ``shift_source(block_call) -> k`` scripts the
    shift indices (tests, parity drivers).
    """

    name = "hidiffusion"

    def __init__(self, adapter, *, position: StepSource | None = None, seed: int | Sequence[int] = 0, **options):
        self.settings = HiDiffusionSettings.from_kwargs(options, owner="patch 'hidiffusion'", also=("seed",))
        seeds = seed_list(seed)
        if adapter.family not in FAMILIES:
            raise InvalidArgumentError(
                f"hidiffusion works on U-Net models ({', '.join(FAMILIES)}); {adapter.family} is a transformer (DiT) model"
            )
        if position is None and self.settings.raunet:
            raise InvalidArgumentError(
                "RAU-Net runs by step: give the patch the loop's step position (position=anysize.sampling.current_step, "
                "or a PipelineStepTracker), or use anysize.patch(pipe_or_adapter, 'hidiffusion')"
            )
        self.seeds = seeds
        self.adapter, self.position = adapter, position
        self.unet, self.family = adapter.network, adapter.family
        self.native = tuple(adapter.native_latent_size)
        profile = FAMILY_PROFILES[self.family]
        self.primary = profile["primary"]
        self.rad_block, self.pool_block, self.window_block = self._blocks(self.family, self.settings)
        self.profiles = profile["low"], profile["high"]
        self.check_layout(adapter, self.settings)
        # per U-Net call
        self.latent_hw: tuple[int, int] | None = None
        self.rad_on = self.pool_on = self.windows_on = False
        self._loop: int | None = None  # the loop of the last call (a new one restarts the shifts)
        self._generators = [torch.Generator("cpu") for _ in self.seeds]
        self.block_calls = 0  # windowed block calls in this run (for scripted shifts)
        #: (index, total, rad_on, pool_on, windows_on, latent_hw) per U-Net call, for inspection
        self.log: list[tuple] = []

    # ------------------------------------------------------------------ layout
    @staticmethod
    def _blocks(family: str, settings: HiDiffusionSettings) -> tuple[int, int, int]:
        """The RAD, pool and window block indices: the settings', else the family's."""
        profile = FAMILY_PROFILES[family]
        return tuple(profile[k] if getattr(settings, k) is None else getattr(settings, k)
                     for k in ("rad_block", "pool_block", "window_block"))

    @classmethod
    def check_layout(cls, adapter, settings: HiDiffusionSettings) -> None:
        """Refuse, before any work, a U-Net without the blocks the chosen parts patch (e.g. a
        1-layer-per-block U-Net has no pair of attention layers to pool between)."""
        unet = adapter.network
        rad_block, pool_block, window_block = cls._blocks(adapter.family, settings)
        down, up = getattr(unet, "down_blocks", None), getattr(unet, "up_blocks", None)
        if down is None or up is None or len(down) != len(up):
            raise InvalidArgumentError("hidiffusion needs a U-Net with matching down_blocks and up_blocks")
        n = len(down)

        def need(cond, what):
            if not cond:
                raise InvalidArgumentError(f"hidiffusion cannot patch this U-Net: {what}")

        if settings.raunet:
            b = rad_block
            need(b < n - 1 and getattr(down[b], "downsamplers", None), f"down_blocks.{b} has no down-sampler for RAD")
            need(isinstance(down[b].downsamplers[0].conv, nn.Conv2d) and down[b].downsamplers[0].conv.stride == (2, 2),
                 f"down_blocks.{b}.downsamplers.0.conv is not a stride-2 Conv2d")
            p, q = pool_block, n - 1 - pool_block
            need(p < n and len(getattr(down[p], "attentions", ()) or ()) >= 2,
                 f"down_blocks.{p} has fewer than 2 attention layers for the pool")
            need(len(getattr(up[q], "attentions", ()) or ()) >= 2, f"up_blocks.{q} has fewer than 2 attention layers for the un-pool")
        if settings.msw_msa:
            w, v = window_block, n - 1 - window_block
            need(w < n and getattr(down[w], "attentions", None) and getattr(up[v], "attentions", None),
                 f"down_blocks.{w} / up_blocks.{v} have no attention layers for windowed attention")

    def _window_attentions(self) -> list[nn.Module]:
        n = len(self.unet.down_blocks)
        out = []
        for block in (self.unet.down_blocks[self.window_block], self.unet.up_blocks[n - 1 - self.window_block]):
            for t2d in block.attentions:
                for tb in getattr(t2d, "transformer_blocks", ()):
                    out.append(tb.attn1)
        return out

    # ------------------------------------------------------------------ context
    @property
    def network(self):
        return self.unet

    def _opening(self) -> None:
        self._reset_run()
        self._loop = None

    def _install(self, undo: Undo) -> None:
        unet, s = self.unet, self.settings
        install = getattr(self.position, "install", None)
        if install is not None:  # a step tracker counts each call before this patch asks where it is
            install(undo)
        # every up-sampler interpolates to the exact skip size (identical to x2 for even sizes)
        num_upsamplers = unet.num_upsamplers
        unet.num_upsamplers = num_upsamplers + 16
        undo.add(lambda: setattr(unet, "num_upsamplers", num_upsamplers))
        undo.hook(unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        if s.raunet:
            n = len(unet.down_blocks)
            rad = DilatedDownsampler(unet.down_blocks[self.rad_block].downsamplers[0].conv, lambda: self.rad_on)
            rad.install()
            undo.add(rad.remove)
            pool = PoolUnpool(unet.down_blocks[self.pool_block].attentions[0],
                              unet.up_blocks[n - 1 - self.pool_block].attentions[1], lambda: self.pool_on)
            pool.install()
            undo.add(pool.remove)
        if s.msw_msa:
            for attn in self._window_attentions():
                undo.processor(attn, WindowAttentionProcessor(attn.processor, self._window_plan))

    # ------------------------------------------------------------------ per call
    def _reset_run(self) -> None:
        self.block_calls = 0
        for g, s in zip(self._generators, self.seeds):
            g.manual_seed(s)

    def _before_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        h0, w0 = int(sample.shape[-2]), int(sample.shape[-1])
        self.latent_hw = (h0, w0)
        where = self.position() if self.position is not None else None
        if where is not None and where.loop != self._loop:
            if self._loop is not None:
                self._reset_run()  # a new run: the shifts start again from the seeds
            self._loop = where.loop
        index, total = (where.index, where.total) if where is not None else (None, None)
        nh, nw = self.native
        above = h0 > nh or w0 > nw
        enabled = above or self.settings.apply_at_native
        rad = pool = False
        if enabled and self.settings.raunet and index is not None:
            t1, t2, aggressive = self.profiles[1] if min(h0 / nh, w0 / nw) >= self.settings.extreme_scale else self.profiles[0]
            s = self.settings
            t1 = t1 if s.t1 is None else s.t1
            t2 = t2 if s.t2 is None else s.t2
            aggressive = aggressive if s.aggressive is None else s.aggressive
            rad, pool = raunet_phase(self.primary, index, total, t1, t2, aggressive, s.aggressive_start)
        self.rad_on, self.pool_on = rad, pool
        self.windows_on = enabled and self.settings.msw_msa
        self.log.append((index, total, rad, pool, self.windows_on, self.latent_hw))
        return None

    def _draw_shift_indices(self, batch: int) -> int | list[int]:
        """One shift index for the call, or one per batch row (per-image generators)."""
        src, choices = self.settings.shift_source, self.settings.shift_choices
        self.block_calls += 1
        if callable(src):
            return int(src(self.block_calls - 1)) % choices
        if src == "none":
            return 0
        if src == "global":
            return shift_index(float(torch.rand(1)), choices)
        ks = [shift_index(float(torch.rand(1, generator=g)), choices) for g in self._generators]
        if len(ks) == 1:
            return ks[0]
        if batch % len(ks):  # not a whole number of images per row group: share the first image's
            return ks[0]
        return [ks[r % len(ks)] for r in range(batch)]

    def _window_plan(self, tokens: int, batch: int = 1):
        if not self.windows_on or self.latent_hw is None:
            return None
        hw = feature_hw(tokens, self.latent_hw)
        if hw is None:
            return None
        grid, c = self.settings.windows, self.settings.shift_choices
        wh, ww = math.ceil(hw[0] / grid), math.ceil(hw[1] / grid)
        k = self._draw_shift_indices(batch)
        if isinstance(k, list):
            return hw, grid, [(i * (wh // c), i * (ww // c)) for i in k]
        return hw, grid, (k * (wh // c), k * (ww // c))


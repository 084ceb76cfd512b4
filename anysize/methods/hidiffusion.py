"""HiDiffusion: RAU-Net + MSW-MSA around another method's denoising steps (default: direct).

The U-Net is patched with :class:`anysize.patches.hidiffusion.HiDiffusionPatch` for the run (see
that module for the operators, the per-family defaults and every deliberate difference from the
official package); each step tells the patch where the run is (``ctx.index`` of
``ctx.num_steps``), so the RAU-Net phase is a fraction of the *executed* steps, also for a
partial (img2img) schedule, and however many network calls the inner method makes per step.
``inner`` names the method whose steps are patched: ``direct`` is HiDiffusion as published;
a windowed method (``multidiffusion``, ...) gets RAU-Net and windowed attention inside each of its
network calls, which only change anything for windows larger than the native size. An inner
method that owns its whole run (multi-stage recipes) runs inside the patch with the patch finding
the step position itself from each stage's schedule.

At or below the native size nothing is changed (plain generation), unless ``apply_at_native``.
Window shifts are drawn from generators seeded with each image's seed, so the same seed gives
the same image, alone or in a batch, and the global torch RNG is not touched (``shift_source="global"`` reproduces the
official package's global draws).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from ..errors import InvalidArgumentError
from ..options import option
from ..patches.hidiffusion import HiDiffusionPatch, HiDiffusionSettings
from ..sampling import StepContext
from .base import Method, MethodOptions
from .registry import METHODS, create, register


def _inner_methods() -> list[str]:
    return sorted(set(METHODS) - {"hidiffusion"})


@dataclass
class HiDiffusionOptions(HiDiffusionSettings, MethodOptions):
    inner: str = option("direct", "the method whose steps run inside the patch", choices=_inner_methods)


@register
class HiDiffusion(Method):
    name = "hidiffusion"
    summary = "RAU-Net + shifted-window attention in the U-Net (HiDiffusion, ECCV 2024)"
    Options = HiDiffusionOptions
    families = ("sd1", "sd2", "sdxl")

    def __init__(self, **options):
        super().__init__(**options)
        self.inner = create(self.options.inner)
        self._patch: HiDiffusionPatch | None = None

    @property
    def wraps(self) -> bool:
        return self.inner.wraps

    def check(self, adapter, height: int, width: int) -> None:
        super().check(adapter, height, width)
        self.inner.check(adapter, height, width)

    def _settings(self) -> dict:
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(HiDiffusionSettings)}

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        return self.inner.predict(ctx, x_in)

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        if self._patch is None:
            raise InvalidArgumentError(
                "hidiffusion steps run inside its patch: use method.run(job), or wrap the sampling loop in "
                "`with method.session(adapter, seeds):`"
            )
        self._patch.clock.set(ctx.index, ctx.num_steps)
        return self.inner.step(ctx, x)

    @contextlib.contextmanager
    def session(self, adapter, seeds: Sequence[int] = (0,)):
        """Open the patch on ``adapter`` for a sampling loop driven by someone else (e.g. an
        img2img / upscaling stage calling :func:`anysize.sampling.sample` with this method on a
        partial schedule); each step then tells the patch its position in that schedule."""
        patch = HiDiffusionPatch(adapter, seed=[int(s) for s in seeds], **self._settings())
        with patch:
            self._patch = patch
            try:
                yield patch
            finally:
                self._patch = None

    def denoise(self, job, latents: Tensor, scheduler, timesteps: Tensor, **kwargs) -> Tensor:
        if self._patch is not None:  # a session is already open around this loop
            return super().denoise(job, latents, scheduler, timesteps, **kwargs)
        with self.session(job.adapter, job.seeds):
            return super().denoise(job, latents, scheduler, timesteps, **kwargs)

    def run(self, job) -> Tensor:
        if type(self.inner).run is Method.run:
            return Method.run(self, job)  # its loop runs in denoise, inside the patch
        # an inner method that owns its run: the patch finds the step from each stage's schedule
        with self.session(job.adapter, job.seeds) as patch:
            patch.clock.clear()
            self._patch = None
            return self.inner.run(job)

"""What a method is: how one denoising step is computed on a canvas of any size.

A method overrides :meth:`Method.predict` (the guided model output for the whole canvas; e.g. one
call, or fused windows), or :meth:`Method.step` (when the step itself changes), or
:meth:`Method.run` (multi-stage recipes built from other methods). Options are declared once with
:mod:`anysize.options` metadata, so the CLI, the API, the UI, metadata and validation all read the
same list.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor

from ..errors import InvalidArgumentError
from ..options import Options
from ..sampling import StepContext, partial_schedule, sample


@dataclasses.dataclass
class MethodOptions(Options):
    """Base of every method's options (none for plain methods)."""


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: families this method supports (None: all)
    families: ClassVar[tuple[str, ...] | None] = None
    #: whether :meth:`refine` can run an img2img pass on a given canvas (multi-stage recipes that
    #: make their own canvas, like asd, cannot)
    refines: ClassVar[bool] = True

    @property
    def wraps(self) -> bool:
        """Whether this run's canvas wraps around horizontally (a 360° panorama), so decoding wraps too."""
        return False

    def __init__(self, **options: Any):
        self.options = self.Options.from_kwargs(options, owner=f"method {self.name!r}")

    def check(self, adapter, height: int, width: int) -> None:
        """Refuse model/size combinations this method cannot do (before any work starts)."""
        if self.families is not None and adapter.family not in self.families:
            raise InvalidArgumentError(
                f"method {self.name!r} supports {', '.join(self.families)}, not {adapter.family}"
            )

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        """Guided model output for the whole canvas at model input ``x_in``."""
        raise NotImplementedError

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        x_in = ctx.model_input(x)
        return ctx.scheduler_step(self.predict(ctx, x_in), x)

    def run(self, job) -> Tensor:
        """Generate final latents for a :class:`~anysize.api.Job`: one loop from pure noise."""
        adapter = job.adapter
        scheduler = job.make_scheduler()
        h, w = job.latent_hw
        timesteps = adapter.set_timesteps(scheduler, job.steps, (h, w))
        latents = adapter.initial_noise((job.cond.batch, adapter.latent_channels, h, w), job.generators)
        latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)
        return self.denoise(job, latents, scheduler, timesteps)

    def refine(self, job, latents: Tensor, strength: float, *, steps: int | None = None, stage: str = "") -> Tensor:
        """SDEdit / img2img: re-noise clean ``latents`` (any size) to ``strength`` and denoise them.

        The schedule is the tail of a ``steps``-step one (default ``job.steps``) chosen by the
        diffusers img2img rule; the noise comes from the job's per-image generators (continuing
        their streams), so a seeded multi-stage recipe is reproducible.
        """
        adapter = job.adapter
        scheduler = job.make_scheduler()
        steps = job.steps if steps is None else steps
        timesteps, begin = partial_schedule(adapter, scheduler, steps, strength, tuple(latents.shape[-2:]))
        noise = adapter.initial_noise(tuple(latents.shape), job.generators)
        x = adapter.from_x0(scheduler, latents.to(noise.dtype), noise, timesteps[:1])
        return self.denoise(job, x, scheduler, timesteps, begin_index=begin, stage=stage)

    def denoise(self, job, latents: Tensor, scheduler, timesteps: Tensor, *, begin_index: int = 0, stage: str = "") -> Tensor:
        """The one sampling loop with this method's steps (override to wrap it, e.g. in a patch)."""
        return sample(
            self, job.adapter, latents, job.cond, scheduler, timesteps,
            generator=job.generators[0], callback=job.callback, cancel=job.cancel, progress=job.progress,
            stage=stage, begin_index=begin_index,
        )

    @classmethod
    def demo_options(cls, adapter) -> dict[str, Any]:
        """Lighter options for ``anysize demo``'s quick sheet (default: none, i.e. the defaults).

        A method whose defaults cost far more than one whole-canvas call per step at 16x area
        returns settings that keep its row within the sheet's time budget; the sheet shows them.
        """
        return {}

    def describe(self) -> dict[str, Any]:
        return self.options.as_dict()

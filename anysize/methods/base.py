"""What a method is: how one denoising step is computed on a canvas of any size.

A method overrides :meth:`Method.predict` (the guided model output for the whole canvas; e.g. one
call, or fused windows), or :meth:`Method.step` (when the step itself changes), or
:meth:`Method.run` (multi-stage recipes built from other methods); :meth:`Method.session` sets up
what every sampling loop of a run needs around it (e.g. a network patch). Options are declared once
with :mod:`anysize.options` metadata, so the CLI, the API, the UI, metadata and validation all read
the same list.

A method object holds its options and nothing else: everything a run needs lives in the
:class:`~anysize.request.Request` and in the sampling loop's :class:`~anysize.sampling.StepContext`
(the images' seeds, the loop's scratch state), so one method object can serve several runs at
once, from several threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager

from ..errors import InvalidArgumentError
from ..options import Options
from ..sampling import StepContext, partial_schedule, sample

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


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
    #: options under which the method is plain generation at the model's native size (default: its
    #: defaults); the registry's contract test holds every method to it
    native_options: ClassVar[dict[str, Any]] = {}
    #: whether the method fuses regional prompts (``regions=`` of :func:`anysize.generate`; see
    #: :mod:`anysize.regions`): the window methods, through :func:`anysize.methods._windows.fuse`
    takes_regions: ClassVar[bool] = False
    #: whether the network's working set is one batch of native-size windows whatever the canvas (the
    #: way out of an out-of-memory error that anysize.generate names)
    bounded_memory: ClassVar[bool] = False
    #: whether the method needs classifier-free guidance (guidance > 1): the front ends refuse less
    #: before any work, and an upscale without a prompt keeps the model's guidance for it
    needs_guidance: ClassVar[bool] = False

    @property
    def wraps(self) -> bool:
        """Whether this run's canvas wraps around horizontally (a 360° panorama), so decoding wraps too."""
        return False

    def __init__(self, **options: Any):
        self.options = self.Options.from_kwargs(options, owner=f"method {self.name!r}")

    def check(self, adapter, height: int, width: int, steps: int | None = None) -> None:
        """Refuse model/size/step-count combinations this method cannot do, before any work starts
        (``steps``: the run's step count, when known)."""
        if self.families is not None and adapter.family not in self.families:
            raise InvalidArgumentError(
                f"method {self.name!r} supports {', '.join(self.families)}, not {adapter.family}"
            )
        f = adapter.vae_factor
        self.geometry(adapter, height // f, width // f)

    def geometry(self, adapter, height: int, width: int) -> Any:
        """Where the method puts its windows, tiles or stages on a latent canvas of height x width;
        raises InvalidArgumentError for a canvas its options cannot cover (default: nothing to place)."""
        return None

    def session(self, request) -> ContextManager:
        """What every sampling loop of a run runs inside (e.g. a network patch); default: nothing."""
        return contextlib.nullcontext()

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        """Guided model output for the whole canvas at model input ``x_in``."""
        raise NotImplementedError

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        x_in = ctx.model_input(x)
        return ctx.scheduler_step(self.predict(ctx, x_in), x)

    def run(self, request, *, stage: str = "") -> Tensor:
        """Generate final latents for a :class:`~anysize.request.Request`: one loop from pure noise
        (``stage`` names it, for a recipe whose first loop this is)."""
        adapter = request.adapter
        scheduler = request.make_scheduler()
        h, w = request.latent_hw
        timesteps = adapter.set_timesteps(scheduler, request.steps, (h, w))
        latents = adapter.initial_noise((request.cond.batch, adapter.latent_channels, h, w), request.generators)
        latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)
        return self.denoise(request, latents, scheduler, timesteps, stage=stage)

    def refine(self, request, latents: Tensor, strength: float, *, steps: int | None = None, stage: str = "") -> Tensor:
        """SDEdit / img2img: re-noise clean ``latents`` (any size) to ``strength`` and denoise them.

        The schedule is the tail of a ``steps``-step one (default ``request.steps``) chosen by the
        diffusers img2img rule; the noise comes from the request's per-image generators (continuing
        their streams), so a seeded multi-stage recipe is reproducible.
        """
        adapter = request.adapter
        scheduler = request.make_scheduler()
        steps = request.steps if steps is None else steps
        timesteps, begin = partial_schedule(adapter, scheduler, steps, strength, tuple(latents.shape[-2:]))
        noise = adapter.initial_noise(tuple(latents.shape), request.generators)
        x = adapter.from_x0(scheduler, latents.to(noise.dtype), noise, timesteps[:1])
        return self.denoise(request, x, scheduler, timesteps, begin_index=begin, stage=stage)

    def denoise(self, request, latents: Tensor, scheduler, timesteps: Tensor, *, begin_index: int = 0, stage: str = "",
                extra: Any = None) -> Tensor:
        """The one sampling loop with this method's steps, inside :meth:`session`; ``extra`` reaches
        every step as ``ctx.extra``."""
        with self.session(request):
            return sample(
                self, request.adapter, latents, request.cond, scheduler, timesteps, seeds=request.seeds,
                generator=request.generators[0], generators=request.generators, callback=request.callback,
                cancel=request.cancel, progress=request.progress, stage=stage, begin_index=begin_index, extra=extra,
            )

    @classmethod
    def demo_options(cls, adapter) -> dict[str, Any]:
        """Lighter options for ``anysize demo``'s quick sheet (default: none, i.e. the defaults).

        A method whose defaults cost far more than one whole-canvas call per step at 4x area
        returns settings that keep its row within the sheet's time budget; the sheet shows them.
        """
        return {}

    def describe(self) -> dict[str, Any]:
        return self.options.as_dict()

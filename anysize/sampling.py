"""The one sampling loop.

It walks the scheduler's timesteps and asks the method for each step; it knows no method. Methods
see a :class:`StepContext` (adapter, scheduler, conditioning, step position, the images' seeds)
and return the next state. Progress, per-step callbacks, cancellation and the step position that
network patches are handed (:func:`current_step`) live here once, for every method. Inside a job's
:func:`run_progress` the loop counts its steps in the job's one bar; outside one it shows its own.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .cancel import cancel_scope
from .errors import Cancelled, InvalidArgumentError
from .lazy import lazy_module
from .models.base import Conditioning, ModelAdapter
from .noise import NoiseSpace
from .patches.steps import StepPosition
from .progress import run_progress

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")

#: the position of the sampling loop running in each thread (what :func:`current_step` reads)
_position = threading.local()
_loops = itertools.count(1)  # loop numbers: a new one tells a patch that a new run started


def current_step() -> StepPosition | None:
    """Where the sampling loop running in this thread is (None outside one): the step position
    source anysize hands to network patches (e.g. HiDiffusion's RAU-Net phases)."""
    return getattr(_position, "value", None)


@dataclass
class StepContext:
    """What a method sees at one denoising step."""

    adapter: ModelAdapter
    scheduler: Any
    cond: Conditioning
    timesteps: Tensor
    index: int
    generator: torch.Generator | None
    #: scratch space a method may use to carry state across the steps of this loop
    state: dict = field(default_factory=dict)
    #: the seed of every image of the batch (per-image random streams derive from them)
    image_seeds: tuple[int, ...] | None = None
    #: a value the method's run passed to this loop (e.g. ScaleDiff's upscaling stage), else None
    extra: Any = None
    #: every image's generator (``generator`` is the first): a stochastic scheduler's step noise is
    #: drawn image by image from them, so an image of a batch is the image its seed gives alone
    generators: tuple = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seed of every image; a method that draws per-image random numbers needs them."""
        if self.image_seeds is None:
            raise InvalidArgumentError(
                "this method draws per-image random numbers: give the sampling loop the image seeds (sample(..., seeds=[...]))"
            )
        return self.image_seeds

    @property
    def t(self) -> Tensor:
        return self.timesteps[self.index]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def is_last(self) -> bool:
        return self.index == len(self.timesteps) - 1

    @property
    def progress(self) -> float:
        """Fraction of the schedule done before this step (0 at the first step)."""
        return self.index / len(self.timesteps)

    @property
    def noise_space(self) -> NoiseSpace:
        return self.adapter.noise_space(self.scheduler)

    def model_input(self, x: Tensor) -> Tensor:
        """The state scaled for the network (identity for schedulers without input scaling)."""
        scale = getattr(self.scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, self.t)

    def scheduler_step(self, out: Tensor, x: Tensor) -> Tensor:
        """scheduler.step with the same extra arguments the diffusers pipelines pass."""
        gens = self.generators  # one per image, as diffusers' pipelines pass a list of generators
        generator = list(gens) if len(gens) > 1 and len(gens) == x.shape[0] else self.generator
        return self.scheduler.step(out, self.t, x, **_step_kwargs(self.scheduler, generator), return_dict=False)[0]


@dataclass
class StepInfo:
    """Passed to the per-step callback after each step."""

    index: int
    num_steps: int
    timestep: Tensor
    latents: Tensor
    stage: str = ""

    def __repr__(self) -> str:  # shapes, not whole tensors
        lat = self.latents
        where = f", stage {self.stage!r}" if self.stage else ""
        return (f"StepInfo(step {self.index + 1}/{self.num_steps}{where}, timestep {float(self.timestep):g}, "
                f"latents {tuple(lat.shape)} {str(lat.dtype).replace('torch.', '')})")


StepCallback = Callable[[StepInfo], Any]


def _step_kwargs(scheduler, generator) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def sample(
    method,
    adapter: ModelAdapter,
    latents: Tensor,
    cond: Conditioning,
    scheduler,
    timesteps: Tensor,
    *,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    generators: Sequence[torch.Generator] = (),
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    stage: str = "",
    begin_index: int = 0,
    extra: Any = None,
) -> Tensor:
    """Denoise ``latents`` along ``timesteps`` (already set on ``scheduler``) with ``method``.

    ``seeds`` are the images' seeds (methods derive their per-image random streams from them);
    ``generators`` the images' generators, from which a stochastic scheduler draws each image's step
    noise (else all of it comes from ``generator``);
    ``extra`` is handed to every step as ``ctx.extra``. ``timesteps`` may be the tail of the
    scheduler's schedule (img2img / SDEdit); ``begin_index`` is then where it starts in
    ``scheduler.timesteps`` (see :func:`partial_schedule`), so multistep schedulers read the
    right sigmas. ``callback(StepInfo)`` runs after each step; returning ``False`` from it, or
    setting ``cancel``, stops the run with :class:`~anysize.errors.Cancelled`. Inside a job's
    :func:`run_progress` its steps count in the job's bar (named ``<job> · <stage>``), else
    ``progress`` shows a bar of its own (``<method> · <stage>``).
    """
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)
    image_seeds = None if seeds is None else tuple(int(s) for s in seeds)
    if image_seeds is not None and len(image_seeds) != latents.shape[0]:
        raise InvalidArgumentError(f"{len(image_seeds)} seeds for a batch of {latents.shape[0]} images")
    state: dict = {}
    n, loop, outer = len(timesteps), next(_loops), current_step()
    try:
        with torch.no_grad(), run_progress(method.name, progress) as bar, cancel_scope(cancel) as scope:
            bar.part(n, stage)
            for i in range(n):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled before step {i + 1}/{n}")
                if scope is not None:  # a step of many network calls stops at the next one
                    scope.where = f"step {i + 1}/{n}"
                _position.value = StepPosition(i, n, loop)
                ctx = StepContext(adapter, scheduler, cond, timesteps, i, generator, state, image_seeds, extra,
                                  tuple(generators))
                latents = method.step(ctx, latents)
                bar.update()
                if callback is not None:
                    if callback(StepInfo(i, n, timesteps[i], latents, stage)) is False:
                        raise Cancelled(f"cancelled by the callback after step {i + 1}/{n}")
    finally:
        _position.value = outer
    return latents


def partial_schedule(adapter: ModelAdapter, scheduler, steps: int, strength: float, latent_hw: tuple[int, int]):
    """The part of a ``steps``-step schedule that an img2img (SDEdit) pass at ``strength`` runs.

    The family's diffusers img2img rule: the schedule its pipeline would use for ``steps`` steps at
    this latent size, less its first ``adapter.img2img_skipped_steps(steps, strength)`` steps.
    Returns ``(timesteps, begin_index)``; re-noise the clean latents to ``timesteps[0]``
    (``adapter.from_x0``) and pass ``begin_index`` to :func:`sample`.
    """
    skipped = check_runs_a_step(adapter, steps, strength)
    full = adapter.set_timesteps(scheduler, steps, latent_hw)
    begin = skipped * getattr(scheduler, "order", 1)
    return full[begin:], begin


def check_runs_a_step(adapter: ModelAdapter, steps: int, strength: float) -> int:
    """The steps an img2img pass at ``strength`` of ``steps`` skips; refuses a pass that runs none
    (callable before any work: it needs no scheduler)."""
    check_strength(strength)
    skipped = adapter.img2img_skipped_steps(steps, strength)
    if skipped >= steps:
        raise InvalidArgumentError(
            f"strength {strength} of {steps} steps runs no step at all; use strength >= {1 / steps:.3g} or more steps"
        )
    return skipped


def check_strength(strength) -> float:
    """An img2img strength must be a number in (0, 1] (1: start from pure noise)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise InvalidArgumentError(f"strength must be in (0, 1], got {strength!r}")
    return float(strength)


def make_generators(seed: int | Sequence[int], batch: int) -> list[torch.Generator]:
    """One CPU generator per image: image i uses seed + i, so any image can be regenerated alone."""
    if isinstance(seed, (list, tuple)):
        seeds = list(seed)
    else:
        seeds = [int(seed) + i for i in range(batch)]
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

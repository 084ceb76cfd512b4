"""HiDiffusion: RAU-Net + MSW-MSA around another method's denoising steps (default: direct).

The U-Net is patched with :class:`anysize.patches.hidiffusion.HiDiffusionPatch` for the run (see
that module for the operators, the per-family defaults and every deliberate difference from the
official package). The patch follows the sampling loop's step position
(:func:`anysize.sampling.current_step`), so the RAU-Net phase is a fraction of the *executed*
steps, also for a partial (img2img) schedule, and however many network calls the inner method
makes per step. ``inner`` names the method whose run is patched: ``direct`` is HiDiffusion as
published; a windowed method (``multidiffusion``, ...) gets RAU-Net and windowed attention inside
each of its network calls, which only change anything for windows larger than the native size;
a multi-stage recipe runs every stage's loop inside the patch, each with its own schedule.

At or below the native size nothing is changed (plain generation), unless ``apply_at_native``.
Window shifts are drawn from generators seeded with each image's seed, so the same seed gives
the same image, alone or in a batch, and the global torch RNG is not touched (``shift_source="global"`` reproduces the
official package's global draws).

With a ControlNet (anysize's addition), the unpatched ControlNet's residuals are area-averaged to
the feature sizes RAU-Net gives the U-Net while it is on
(:class:`~anysize.models.control_pixels.FittingResidual`,
``tests/test_controlnet.py::test_hidiffusion_raunet_gets_residuals_resized_to_its_feature_sizes``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..options import option
from ..patches._undo import MARK as PATCH_MARK
from ..patches.hidiffusion import HiDiffusionPatch, HiDiffusionSettings
from ..sampling import StepContext, current_step
from .base import Method, MethodOptions
from .registry import METHODS, create, register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


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

    @property
    def wraps(self) -> bool:
        return self.inner.wraps

    def check(self, adapter, height: int, width: int, steps: int | None = None) -> None:
        super().check(adapter, height, width, steps)
        HiDiffusionPatch.check_layout(adapter, self.options)  # the options are the patch's settings too
        self.inner.check(adapter, height, width, steps)

    def session(self, request):
        """The patch, open around every sampling loop of the run; it follows the loop's step position."""
        settings = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(HiDiffusionSettings)}
        return HiDiffusionPatch(request.adapter, position=current_step, seed=list(request.seeds), **settings)

    def run(self, request) -> Tensor:
        # the inner method's whole run (one loop, or one per stage) inside the patch
        with self.session(request):
            return self.inner.run(request)

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        return self.inner.predict(ctx, x_in)

    def step(self, ctx: StepContext, x: Tensor) -> Tensor:
        if not isinstance(getattr(ctx.adapter.network, PATCH_MARK, None), HiDiffusionPatch):
            raise InvalidArgumentError(  # the steps alone would be plain generation: never a silently wrong image
                "hidiffusion steps run inside its patch: use method.run(request) or method.refine(...), or wrap the "
                "sampling loop in `with method.session(request):`"
            )
        return self.inner.step(ctx, x)

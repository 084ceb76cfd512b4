"""Direct generation: the network runs on the whole canvas at once, whatever its size.

The baseline every paper reports. At sizes far from native it shows the failure the other methods
fix (duplicated objects, broken composition); at the native size it is plain generation, and
every other method must reduce to it there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sampling import StepContext
from .base import Method
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


@register
class Direct(Method):
    name = "direct"
    summary = "the whole canvas in one network call per step (baseline)"

    def predict(self, ctx: StepContext, x_in: Tensor) -> Tensor:
        return ctx.adapter.predict_guided(x_in, ctx.t, ctx.cond)

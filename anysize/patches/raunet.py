"""RAU-Net operators: a resolution-aware down-sampler and an in-block pool/un-pool pair.

HiDiffusion shrinks the feature maps that deep U-Net blocks see above the training resolution,
early in sampling only, with two operators (spec §1.3):

* **RAD** (dilated strided conv): the 3x3 stride-2 conv of a ``Downsample2D`` is applied with
  stride 4, padding 2, dilation 2 -- same weights, a 5x5 receptive field, output ``ceil(x/4)``.
* **pool / un-pool**: inside a ``CrossAttnDownBlock2D``, the output of the first (resnet,
  attention) pair is average-pooled 2x2 (ceil mode; this pooled map is also the skip), and inside
  the mirrored ``CrossAttnUpBlock2D`` the output of the second pair is resized bicubically back to
  the size recorded before pooling.

The matching up-samplers need no change: while the patch is open the U-Net forwards the exact
skip size to every ``Upsample2D`` (nearest-neighbour to that size), which undoes any of these
reductions and is identical to the plain x2 up-sampling whenever sizes are even.

The operators here are mechanical: ``is_active()`` callables decide per U-Net call whether they
apply; the schedule lives in :mod:`anysize.patches.hidiffusion`. Every change is an instance
attribute or a hook that ``remove()`` takes away again, leaving the modules exactly as they were.
"""

from __future__ import annotations

from typing import Callable

from ..lazy import lazy_module

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
nn = lazy_module("torch.nn")


class DilatedDownsampler:
    """Runs ``conv`` (a stride-2 3x3 ``nn.Conv2d``) with stride 4, padding 2, dilation 2 while
    ``is_active()``; otherwise the conv runs unchanged."""

    def __init__(self, conv: nn.Conv2d, is_active: Callable[[], bool]):
        self.conv = conv
        self.is_active = is_active
        self._had_forward = "forward" in conv.__dict__
        self._old_forward = conv.__dict__.get("forward")

    def install(self) -> None:
        conv, original = self.conv, self.conv.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.is_active():
                return F.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2, groups=conv.groups)
            return original(x)

        conv.forward = forward

    def remove(self) -> None:
        if self._had_forward:
            self.conv.forward = self._old_forward
        else:
            self.conv.__dict__.pop("forward", None)


class PoolUnpool:
    """Average-pools 2x2 (ceil) after ``down_attention`` and resizes bicubically back to the
    recorded size after ``up_attention`` while ``is_active()``."""

    def __init__(self, down_attention: nn.Module, up_attention: nn.Module, is_active: Callable[[], bool]):
        self.down_attention = down_attention
        self.up_attention = up_attention
        self.is_active = is_active
        self.recorded: tuple[int, int] | None = None
        self._handles = []

    def _pool(self, module, args, output):
        if not self.is_active():
            return None
        x = output[0] if isinstance(output, tuple) else output.sample
        self.recorded = (x.shape[-2], x.shape[-1])
        x = F.avg_pool2d(x, kernel_size=(2, 2), ceil_mode=True)
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=x)

    def _unpool(self, module, args, output):
        if not self.is_active() or self.recorded is None:
            return None
        x = output[0] if isinstance(output, tuple) else output.sample
        x = F.interpolate(x, size=self.recorded, mode="bicubic")
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=x)

    def install(self) -> None:
        self._handles = [
            self.down_attention.register_forward_hook(self._pool),
            self.up_attention.register_forward_hook(self._unpool),
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.recorded = None

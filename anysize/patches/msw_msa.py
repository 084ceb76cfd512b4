"""MSW-MSA: shifted-window self-attention for the top U-Net blocks (HiDiffusion, §2 of the spec).

The self-attention of a transformer block is computed inside a ``grid x grid`` tiling of the
feature map instead of over the whole map. The tiling is cyclically shifted by ``k * (window //
choices)`` tokens per axis, with ``k`` drawn anew for every block call, so window borders move
between steps and no seam settles. Nothing else changes: the block's norm, cross-attention and
feed-forward run on the full map, and the block's own attention processor (SDPA, xformers, LoRA,
...) does the attention itself, on ``grid**2`` times as many, ``grid**2`` times shorter sequences.

It is installed as an attention *processor wrapper* on ``attn1`` of the chosen blocks: the
processor receives the already-normalised tokens, so the block's ``forward`` is not copied. The
wrapper falls back to the wrapped processor (plain global attention) whenever windowing does not
apply: inactive step, attention mask, cross-attention, or a token count that is not a map of the
current latent.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Callable

from ..lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")


def feature_hw(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of a feature map with ``tokens`` tokens inside a U-Net whose input latent is
    ``latent_hw``: the latent divided by the block's down-sampling factor, rounded up (every
    down-sampler of the U-Net and of RAU-Net rounds up). None if no such map exists."""
    h0, w0 = latent_hw
    if tokens <= 0:
        return None
    r = round(math.sqrt(h0 * w0 / tokens))
    if r < 1:
        return None
    h, w = math.ceil(h0 / r), math.ceil(w0 / r)
    return (h, w) if h * w == tokens else None


def shift_index(u: float, choices: int) -> int:
    """Map a uniform draw ``u`` to a shift index in 0..choices-1 by equal intervals, closed on the
    right, as the official package does for 4 choices: u <= 1/4 -> 0, (1/4, 1/2] -> 1, ..."""
    k = 0
    while k < choices - 1 and u > (k + 1) / choices:
        k += 1
    return k


def window_partition(x: Tensor, hw: tuple[int, int], grid: int, shift: tuple[int, int]):
    """(B, h*w, C) tokens -> (B*grid*grid, wh*ww, C) windows, and what :func:`window_merge` needs.

    Windows are ``ceil(h/grid) x ceil(w/grid)``. When the map does not split evenly (an odd side
    for the 2x2 grid) it is resized bicubically to ``grid`` whole windows first and back
    afterwards, as the official package does. The map is rolled by ``-shift`` before the split;
    windows are stacked window-major inside each sample (index ``b*grid*grid + i*grid + j``).
    """
    b, n, c = x.shape
    h, w = hw
    wh, ww = math.ceil(h / grid), math.ceil(w / grid)
    x = x.view(b, h, w, c)
    resized = (grid * wh, grid * ww) != (h, w)
    if resized:
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(grid * wh, grid * ww), mode="bicubic").permute(0, 2, 3, 1)
    if shift[0] or shift[1]:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.reshape(b, grid, wh, grid, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * grid * grid, wh * ww, c)
    return x, (b, h, w, grid, wh, ww, shift, resized)


def window_merge(windows: Tensor, undo) -> Tensor:
    """The inverse of :func:`window_partition` for a (B*grid*grid, wh*ww, C') tensor."""
    b, h, w, grid, wh, ww, shift, resized = undo
    c = windows.shape[-1]
    x = windows.reshape(b, grid, grid, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, grid * wh, grid * ww, c)
    if shift[0] or shift[1]:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    if resized:
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
    return x.reshape(b, h * w, c)


class WindowAttentionProcessor:
    """Wraps a block's self-attention processor; ``plan(tokens, batch)`` says per call whether and
    how to window: None (global attention) or ``((h, w), grid, shift)`` where ``shift`` is one
    ``(shift_h, shift_w)`` for the whole batch or a list of them, one per batch row."""

    def __init__(self, inner, plan: Callable[[int], tuple | None]):
        self.inner = inner
        self.plan = plan
        try:
            params = inspect.signature(inner.__call__).parameters
            self._inner_takes = None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else set(params)
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            self._inner_takes = None

    def _call_inner(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        kw = dict(kwargs)
        if temb is not None:
            kw["temb"] = temb
        if self._inner_takes is not None:
            kw = {k: v for k, v in kw.items() if k in self._inner_takes}
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kw)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        plan = None
        if encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3:
            plan = self.plan(hidden_states.shape[1], hidden_states.shape[0])
        if plan is None:
            return self._call_inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        hw, grid, shift = plan
        if isinstance(shift, tuple):
            windows, undo = window_partition(hidden_states, hw, grid, shift)
            out = self._call_inner(attn, windows, None, None, temb, kwargs)
            return window_merge(out, undo)
        # one shift per row: partition rows separately, attend in one call, merge rows separately
        parts = [window_partition(hidden_states[r : r + 1], hw, grid, s) for r, s in enumerate(shift)]
        out = self._call_inner(attn, torch.cat([w for w, _ in parts]), None, None, temb, kwargs)
        chunks = out.split(grid * grid)
        return torch.cat([window_merge(c, undo) for c, (_, undo) in zip(chunks, parts)])

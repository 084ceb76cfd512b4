"""I-Max's changes to the FLUX transformer (Du et al. 2024, arXiv 2410.07536; official code
PRIS-CV/I-Max ``transformer_flux.py`` / ``attention_processor.py``) as one reversible patch.

    with IMaxPatch(adapter, ntk_factor=10, proportional_attention=True, text_duplication=True):
        out = adapter.predict(x, t, embeds)     # any token grid

For a call with ``n`` image tokens, a text sequence of ``l`` tokens and a model whose native canvas
has ``n0`` image tokens (``native_latent_size / 2`` per side; FLUX.1: 64 x 64 = 4096):

* **NTK-aware RoPE with a position-interpolation floor**: every axis's frequencies
  ``ω_k = θ^(-2k/d)`` become ``max(ω_k / ntk^(2k/d), ω_k / √(n / n0))`` — NTK-aware scaling of the
  base θ by ``ntk_factor``, never below the frequencies of linear position interpolation to the
  native token count (the official ``ntk_clip``). With ``ntk_factor`` 1 and ``n ≤ n0`` the floor
  raises the frequencies of a canvas smaller than the native one (officially always on, so it
  acts in the native-resolution stage too); with 1 and ``n ≥ n0`` nothing changes and the stock
  rotary embedding runs.
* **Proportional attention** (``proportional_attention``): the attention scale
  ``√(log_{n0 + l}(L) / d)`` for ``L`` keys (text and image tokens) instead of ``1/√d``, applied as
  the factor ``√(ln L / ln(n0 + l))`` on every query after its RMS norm (RoPE is a rotation, so
  scaling before or after it is the same).
* **Text duplication** (``text_duplication``): the prompt tokens are repeated
  ``⌊H / h0⌋ · ⌊W / w0⌋`` times (token grid H x W, native grid h0 x w0, each factor at least 1),
  copy ``(i, j)`` at text position ids ``(0, i·h0, j·w0)``, so every native-size region of the
  canvas has a prompt copy near it in RoPE space. Only the image tokens come out, as always.

The floor's ``n`` is the number of position ids less one prompt's length ``l`` (official:
``len(ids) - 512``, FLUX's T5 length, so with duplicated text the extra copies count as image
tokens, as here). Pure tensor code apart from the hooks (:func:`imax_frequencies`,
:func:`rotary_tables`, :func:`attention_factor`, :func:`duplicate_text`); nothing reads a device
tensor on the host, so the patch adds no device synchronisation. Leaving the context removes the
pre-hook, the query hooks and the rotary override, so the network is bit-identical to before.

Generalised from the official constants: ``n0`` (official 4096) and the native grid
``h0 x w0`` (official 64 x 64) are the adapter's native size, ``l`` (official 512) is the
prompt's actual length, so any FLUX-architecture model and base size gets the same rules.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ._undo import ReversiblePatch, Undo

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")


# ----------------------------------------------------------------------------- pure tensor code


def imax_frequencies(dim: int, theta: float, ntk_factor: float, image_tokens: int, native_tokens: int,
                     *, device=None) -> Tensor:
    """The ``dim // 2`` rotary frequencies of one axis (float64): NTK-scaled, floored by
    linear position interpolation to ``native_tokens`` (see the module docstring)."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
    omega = 1.0 / (theta * ntk_factor) ** scale
    floor = 1.0 / theta**scale / math.sqrt(image_tokens / native_tokens)
    return torch.maximum(omega, floor)


def rotary_tables(ids: Tensor, axes_dim, theta: float, ntk_factor: float, image_tokens: int,
                  native_tokens: int) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (L, sum(axes_dim)) float32, laid out as diffusers' ``FluxPosEmbed``
    (every frequency repeated twice, axes concatenated)."""
    pos = ids.to(torch.float64)
    cos, sin = [], []
    for i, d in enumerate(axes_dim):
        omega = imax_frequencies(d, theta, ntk_factor, image_tokens, native_tokens, device=ids.device)
        angles = torch.outer(pos[:, i], omega)
        cos.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)


def attention_factor(keys: int, train_keys: int) -> float:
    """Proportional attention's factor on the queries: √(ln keys / ln train_keys)."""
    return math.sqrt(math.log(keys) / math.log(train_keys))


def duplication_grid(grid: tuple[int, int], native_grid: tuple[int, int]) -> tuple[int, int]:
    """Prompt copies per axis for a token grid: ``max(1, ⌊H / h0⌋), max(1, ⌊W / w0⌋)``."""
    return max(1, grid[0] // native_grid[0]), max(1, grid[1] // native_grid[1])


def duplicate_text(embeds: Tensor, txt_ids: Tensor, copies: tuple[int, int],
                   native_grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The prompt tokens (B, l, D) and their (l, 3) ids repeated ``copies[0]·copies[1]`` times,
    copy (i, j) offset by (i·h0, j·w0) in the row and column ids (row-major copies)."""
    ch, cw = copies
    offsets = []
    for i in range(ch):
        for j in range(cw):
            off = torch.zeros(1, 3, dtype=txt_ids.dtype, device=txt_ids.device)
            off[0, 1], off[0, 2] = i * native_grid[0], j * native_grid[1]
            offsets.append(txt_ids + off)
    return torch.cat([embeds] * (ch * cw), dim=1), torch.cat(offsets, dim=0)


# ----------------------------------------------------------------------------- the patch


class IMaxPatch(ReversiblePatch):
    """The reversible I-Max change of a FLUX adapter's transformer (see the module docstring)."""

    name = "imax"

    def __init__(self, adapter, *, ntk_factor: float = 1.0, proportional_attention: bool = False,
                 text_duplication: bool = False):
        if adapter.family != "flux":
            raise InvalidArgumentError(f"the imax patch supports flux, not {adapter.family}")
        if isinstance(ntk_factor, bool) or not isinstance(ntk_factor, (int, float)) or not ntk_factor >= 1:
            raise InvalidArgumentError(f"ntk_factor must be a number >= 1, got {ntk_factor!r}")
        self.network = adapter.network
        self.ntk_factor = float(ntk_factor)
        self.proportional_attention = bool(proportional_attention)
        self.text_duplication = bool(text_duplication)
        nh, nw = adapter.native_latent_size
        self.native_grid = (max(1, nh // 2), max(1, nw // 2))
        self.native_tokens = self.native_grid[0] * self.native_grid[1]
        # per network call (set by the pre-hook from shapes only)
        self.text_len = 0  # one prompt's tokens, before duplication
        self.keys = 0  # text + image tokens the attention sees
        #: (token grid, prompt copies, image tokens of the RoPE floor) of every call, for inspection
        self.log: list[tuple] = []

    def _opening(self) -> None:
        self.log.clear()

    def _install(self, undo: Undo) -> None:
        net = self.network
        undo.hook(net.register_forward_pre_hook(self._before, with_kwargs=True))
        pos_embed = net.pos_embed
        stock = pos_embed.forward
        patch = self

        def forward(ids):
            image_tokens = ids.shape[0] - patch.text_len
            if patch.ntk_factor == 1.0 and image_tokens >= patch.native_tokens:
                return stock(ids)  # the floor is below θ's own frequencies: the stock tables exactly
            return rotary_tables(ids, pos_embed.axes_dim, pos_embed.theta, patch.ntk_factor, image_tokens,
                                 patch.native_tokens)

        pos_embed.forward = forward
        undo.add(lambda: pos_embed.__dict__.pop("forward", None), "rope")
        if self.proportional_attention:
            blocks = list(net.transformer_blocks) + list(net.single_transformer_blocks)
            for attn in (b.attn for b in blocks):
                for norm in (attn.norm_q, getattr(attn, "norm_added_q", None)):
                    if norm is not None:
                        undo.hook(norm.register_forward_hook(self._scale_queries))

    def _before(self, module, args, kwargs):
        ehs, txt_ids, img_ids = kwargs.get("encoder_hidden_states"), kwargs.get("txt_ids"), kwargs.get("img_ids")
        hidden = args[0] if args else kwargs.get("hidden_states")
        if ehs is None or txt_ids is None or img_ids is None or hidden is None:
            raise InvalidArgumentError("the imax patch needs the FLUX transformer called with keyword "
                                       "hidden_states, encoder_hidden_states, txt_ids and img_ids")
        if txt_ids.ndim == 3:  # the older diffusers layout, (B, L, 3): one set for the batch
            txt_ids = txt_ids[0]
        self.text_len = int(txt_ids.shape[0])
        tokens = int(hidden.shape[1])
        copies = (1, 1)
        if self.text_duplication:
            grid = self._grid(img_ids, tokens)
            copies = duplication_grid(grid, self.native_grid)
            if copies != (1, 1):
                ehs, txt_ids = duplicate_text(ehs, txt_ids, copies, self.native_grid)
                kwargs = {**kwargs, "encoder_hidden_states": ehs, "txt_ids": txt_ids}
        self.keys = tokens + int(ehs.shape[1])
        self.log.append((tokens, copies, self.keys - self.text_len))
        return args, kwargs

    @staticmethod
    def _grid(img_ids: Tensor, tokens: int) -> tuple[int, int]:
        """The image token grid (rows, cols) of a raster canvas; read once per ids tensor."""
        from .npa import _raster_grid

        grid = _raster_grid(img_ids)
        if grid is None or grid[0] * grid[1] != tokens:
            raise InvalidArgumentError("the imax patch's text duplication needs the image position ids of a raster "
                                       "canvas (rows, then columns)")
        return grid

    def _scale_queries(self, module, inputs, output):
        return output * attention_factor(self.keys, self.native_tokens + self.text_len)

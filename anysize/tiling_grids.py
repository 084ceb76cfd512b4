"""Tile grids and fusion weights for tiled diffusion (model-agnostic; positions in latent pixels).

Two grid kinds, one per axis (a 2-D grid is the product of a row axis and a column axis):

* :func:`overlap_origins` — explicit overlap (MultiDiffusion, Mixture of Diffusers): windows of
  ``window`` px every ``stride`` px. Unlike diffusers' panorama grid, a last window clamped to the
  border is appended when ``(length - window)`` is not a multiple of ``stride``, so no pixel is
  ever left uncovered. ``circular`` wraps windows around the end (360° panoramas).
* :func:`shifted_origins` — implicit overlap (FSTD): ``ceil(length / tile)`` non-overlapping tiles
  whose grid is shifted by ``offset`` px, the last tile clamped to the border. ``"asd"`` is the
  official placement (may repeat a tile); ``"improved"`` (spec §6.1b) has the same count, never a
  duplicate, and leaves no stale leading strip when ``offset >= remainder``.

:func:`fusion_weights` gives the per-window weight map: ``uniform`` (MultiDiffusion's mean) or
``gaussian`` (Mixture of Diffusers: σ = 0.1·size per axis, outer product, symmetric midpoint).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .devices import upload
from .errors import InvalidArgumentError, check_choice
from .lazy import lazy_module
from .options import require

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")

__all__ = [
    "PLACEMENTS",
    "WEIGHTINGS",
    "block_index",
    "block_starts",
    "context_views",
    "fusion_weights",
    "overlap_origins",
    "shifted_origins",
    "uncovered",
]

WEIGHTINGS = ("gaussian", "uniform")
PLACEMENTS = ("asd", "improved")


def overlap_origins(length: int, window: int, stride: int, *, circular: bool = False) -> list[int]:
    """Window starts along one axis for explicit-overlap tiling.

    Not circular: ``0, stride, 2·stride, …`` while the window fits, plus ``length - window`` if
    the last regular window stops short of the end (full coverage). Circular: ``ceil(length /
    stride)`` starts ``k·stride``; windows reaching past the end wrap around to the start.
    """
    require("length", length, kind="int", low=1)
    require("window", window, kind="int", low=1)
    require("stride", stride, kind="int", low=1)
    if window > length:
        raise InvalidArgumentError(f"window {window} is larger than the canvas side {length}")
    if stride > window:
        raise InvalidArgumentError(f"stride {stride} is larger than the window {window}: pixels would be skipped")
    if circular:
        if window == length:
            return [0]
        return [k * stride for k in range(math.ceil(length / stride))]
    origins = list(range(0, length - window + 1, stride))
    if origins[-1] != length - window:
        origins.append(length - window)
    return origins


def shifted_origins(length: int, tile: int, offset: int, placement: str = "improved") -> list[int]:
    """Tile starts along one axis for FSTD: always ``ceil(length / tile)`` of them.

    ``offset`` (0 <= offset < tile) shifts the grid; the last tile is clamped to the border.
    ``asd``: ``min(j·tile + offset, length - tile)`` (the official code; duplicates possible).
    ``improved``: with n tiles and remainder r = length - (n-1)·tile —
    n = 1: [0]; offset 0: [0, T, …, (n-2)T, L-T]; offset >= r: [0] + [offset + jT, j < n-2] + [L-T]
    (full coverage); else [offset + jT, j < n-1] + [L-T] (pixels [0, offset) uncovered).
    """
    require("length", length, kind="int", low=1)
    require("tile", tile, kind="int", low=1)
    check_choice("placement", placement, PLACEMENTS)
    if tile > length:
        raise InvalidArgumentError(f"tile {tile} is larger than the canvas side {length}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < tile:
        raise InvalidArgumentError(f"offset must be an integer in 0..{tile - 1}, got {offset!r}")
    n = math.ceil(length / tile)
    last = length - tile
    if placement == "asd":
        return [min(j * tile + offset, last) for j in range(n)]
    if n == 1:
        return [0]
    if offset == 0:
        return [j * tile for j in range(n - 1)] + [last]
    rem = length - (n - 1) * tile
    if offset >= rem:
        return [0] + [offset + j * tile for j in range(n - 2)] + [last]
    return [offset + j * tile for j in range(n - 1)] + [last]


def uncovered(length: int, size: int, origins: list[int]) -> list[int]:
    """Pixels of an axis that no window [o, o + size) covers (for tests and diagnostics)."""
    covered = [False] * length
    for o in origins:
        for k in range(o, min(o + size, length)):
            covered[k] = True
    return [k for k, c in enumerate(covered) if not c]


def _gaussian_1d(n: int) -> Tensor:
    # Mixture of Diffusers: exp(-((k - mid)/n)^2 / (2·0.01)) / sqrt(2π·0.01), i.e. σ = 0.1·n
    var = 0.01
    k = torch.arange(n, dtype=torch.float64)
    mid = (n - 1) / 2
    return torch.exp(-(((k - mid) / n) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def fusion_weights(
    height: int, width: int, weighting: str, *, single_row: bool = False, single_col: bool = False,
    device=None, dtype: torch.dtype | None = None,
) -> Tensor:
    """(height, width) weight map of one window.

    ``single_row`` / ``single_col`` say that the grid has only one window along that axis; there
    any weight cancels in the normalised sum, so it is 1 (which makes a one-window grid an exact
    copy of the network output, with no rounding).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    dtype = torch.float32 if dtype is None else dtype
    if weighting == "uniform":
        return torch.ones(height, width, device=device, dtype=dtype)
    gy = torch.ones(height, dtype=torch.float64) if single_row else _gaussian_1d(height)
    gx = torch.ones(width, dtype=torch.float64) if single_col else _gaussian_1d(width)
    return upload(gy[:, None] * gx[None, :], device, dtype)


def block_starts(length: int, parts: int) -> list[int]:
    """Bounds of ``parts`` nearly equal blocks of an axis: block i is [s[i], s[i+1]) with
    s[i] = floor(i·length/parts). Every block is non-empty when parts <= length (any ratio, not
    only integers: used to subsample a canvas one pixel per block and to upsample back)."""
    require("length", length, kind="int", low=1)
    require("parts", parts, kind="int", low=1)
    if parts > length:
        raise InvalidArgumentError(f"cannot split {length} pixels into {parts} non-empty blocks")
    return [i * length // parts for i in range(parts + 1)]


def block_index(length: int, parts: int) -> Tensor:
    """(length,) long tensor: the block of :func:`block_starts` each pixel falls in."""
    s = torch.tensor(block_starts(length, parts)[1:-1], dtype=torch.long)
    return torch.bucketize(torch.arange(length), s, right=True)


def context_views(length: int, core: int, window: int) -> list[tuple[int, int, int]]:
    """Implicit-overlap views along one axis (ElasticDiffusion's local patches).

    Cores of ``core`` px start at 0, core, 2·core, ... (the last one clamped to the border); each is
    run inside the ``window``-px crop that contains it, as centred as possible and clamped to the
    canvas, so the network sees ``window - core`` px of context around it. Returns
    ``(own_start, own_end, crop_start)`` per view, where [own_start, own_end) is the part of the
    core that no earlier core covers (first writer wins), so the owned parts partition the axis.
    An axis no longer than the window is one view without context: (0, length, 0).
    """
    require("length", length, kind="int", low=1)
    require("core", core, kind="int", low=1)
    require("window", window, kind="int", low=1)
    if core > window:
        raise InvalidArgumentError(f"core {core} is larger than the window {window}")
    if length <= window:
        return [(0, length, 0)]
    n = math.ceil((length - core) / core) + 1
    views, end = [], 0
    for k in range(n):
        a = min(k * core, length - core)
        crop = min(max(a - (window - core) // 2, 0), length - window)
        views.append((max(a, end), a + core, crop))
        end = a + core
    return views

"""The tiled VAE: memory-bounded ``AutoencoderKL`` decode / encode with synchronised GroupNorm
statistics (spec ``asd_tiling.md`` §3.4 and §6.2), which the model adapters switch to above a size.

Self-contained: it only needs torch, diffusers' VAE and :mod:`anysize.errors`. (The tile grids of
tiled *diffusion* are :mod:`anysize.tiling_grids`.)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidArgumentError, InvalidSizeError, check_choice

__all__ = [
    "DEFAULT_VAE_TILE_THRESHOLD_PIXELS",
    "VAE_STATS_MODES",
    "TiledVAEError",
    "frozen_group_norms",
    "should_tile",
    "tiled_decode",
    "tiled_encode",
    "vae_scale_factor",
]


# ================================================================================================
# 1. Tiled VAE
# ================================================================================================
#
# How it works (summary; details in the docstrings of tiled_decode / tiled_encode):
#
# * The input (latent for decode, image for encode) is cut into a grid of tiles.  Per axis there
#   are n = max(1, ceil((L - 2*halo) / tile)) tiles with a real core size c = ceil((L - 2*halo) / n);
#   core k spans [halo + k*c, halo + (k+1)*c), the first core is extended to 0 and the last to L.
#   A tile's input box is its core +- halo, clamped to the input; only the core of the tile's
#   output (x f for decode, / f for encode) is written into a preallocated output tensor.
# * Convolutions are local, so a halo larger than their receptive field makes a tile's core exact.
#   GroupNorm is global: each tile would normalise with its own statistics and show tone seams.
#   While the tiled pass runs, every nn.GroupNorm of the decoder (encoder) has its ``forward``
#   swapped for one that normalises with given whole-image per-(batch, group) mean/variance
#   ("frozen" statistics).  The statistics come from either
#     - "exact": recomputation.  For GroupNorm layer l (in call order) every tile is run up to l
#       (layers < l already frozen; the forward is cut short by a private exception) and
#       sum(x), sum(x^2), count over the tile's CORE region are accumulated in float64;
#       mean = S1/n, var = S2/n - mean^2 (law of total variance).  Cost ~ (#GroupNorms / 2 + 1)
#       tiled passes; memory: one tile.
#     - "fast": one pass on a downsampled copy of the whole input (nearest-exact, long side about
#       ``fast_size``), re-standardised per channel to the full input's mean/std and clamped to its
#       min/max, recording every GroupNorm's statistics.  Cost ~ 1 tiled pass + one small pass.
# * Each GroupNorm must be called exactly once per forward (true for diffusers' Encoder/Decoder);
#   this is checked on every pass and a TiledVAEError is raised otherwise.

#: ``should_tile`` default: tile when the decoded image has more pixels than 2048 x 2048.  At that
#: size one 128-channel full-resolution activation of an SD-style VAE decoder is 2 GiB in fp32
#: (1 GiB in fp16) and an untiled decode peaks at several of them; it is also 4x the area of
#: SDXL's native 1024^2 (16x SD-1.5's 512^2), beyond which untiled decodes stop fitting on
#: common 8-16 GB GPUs.
DEFAULT_VAE_TILE_THRESHOLD_PIXELS = 2048 * 2048

VAE_STATS_MODES = ("exact", "fast")


class TiledVAEError(RuntimeError):
    """The VAE breaks an assumption of the tiled pass (e.g. a GroupNorm called twice per forward)."""


class _StopForward(Exception):
    """Private: raised by the GroupNorm whose statistics are being accumulated, to cut the forward short."""


# ------------------------------------------------------------------------------------------------
# 1a. Small helpers
# ------------------------------------------------------------------------------------------------


def vae_scale_factor(vae: nn.Module) -> int:
    """Spatial factor between image and latent: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def should_tile(
    vae: nn.Module,
    latent_hw: tuple[int, int],
    *,
    threshold_pixels: int = DEFAULT_VAE_TILE_THRESHOLD_PIXELS,
) -> bool:
    """The "auto" rule: tile the VAE when the decoded image area exceeds ``threshold_pixels``.

    ``latent_hw`` is the latent's (height, width); the decoded area is ``h*f * w*f`` with
    ``f = vae_scale_factor(vae)``.  The default threshold is 2048 x 2048 pixels (see
    :data:`DEFAULT_VAE_TILE_THRESHOLD_PIXELS`).  An image of exactly the threshold is not tiled.
    """
    h, w = (int(v) for v in latent_hw)
    if h <= 0 or w <= 0:
        raise InvalidSizeError(f"latent size must be positive, got {h}x{w}")
    if threshold_pixels <= 0:
        raise InvalidArgumentError(f"threshold_pixels must be positive, got {threshold_pixels}")
    f = vae_scale_factor(vae)
    return (h * f) * (w * f) > threshold_pixels


def _axis_grid(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as ``(core_start, core_end, box_start, box_end)``.

    n = max(1, ceil((L - 2*halo)/tile)); c = ceil((L - 2*halo)/n); core k = [halo + k*c,
    halo + (k+1)*c) with the first extended to 0 and the last to L; box = core +- halo clamped.
    """
    n = max(1, math.ceil((length - 2 * halo) / tile))
    if n == 1:
        return [(0, length, 0, length)]
    core = math.ceil((length - 2 * halo) / n)
    out = []
    for k in range(n):
        c0 = 0 if k == 0 else halo + k * core
        c1 = length if k == n - 1 else halo + (k + 1) * core
        out.append((c0, c1, max(0, c0 - halo), min(length, c1 + halo)))
    return out


def _map_interval(a: int, b: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Map the interval [a, b) of an axis of length ``n_in`` to an axis of length ``n_out``.

    ``n_out`` is ``n_in * 2**k`` (decoder upsampling) or ``floor(n_in / 2**k)`` (encoder
    downsampling, whose interior boundaries are multiples of 2**k by construction of the grid).
    """
    if n_out == n_in:
        return a, b
    if n_out > n_in:
        s = n_out // n_in
        if s * n_in != n_out:
            raise TiledVAEError(f"activation size {n_out} is not an integer multiple of the tile size {n_in}")
        return a * s, b * s
    for k in range(1, 31):
        if n_in >> k == n_out:
            if a % (1 << k) or (b != n_in and b % (1 << k)):
                raise TiledVAEError(f"tile boundary [{a}, {b}) is not aligned to the downsampling factor {1 << k}")
            return a >> k, (n_out if b == n_in else b >> k)
    raise TiledVAEError(f"cannot relate activation size {n_out} to tile size {n_in}")


def _spatial_hw(x: Tensor, in_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a GroupNorm input.  4-D inputs give it directly; the VAE attention processor
    feeds its GroupNorm a (B, C, h*w) tensor, whose (h, w) is found among the power-of-two
    rescalings of the tile input size."""
    if x.ndim == 4:
        return int(x.shape[2]), int(x.shape[3])
    n = math.prod(x.shape[2:])
    hin, win = in_hw
    for k in range(0, 31):
        for h, w in ((hin << k, win << k), (hin >> k, win >> k)):
            if h * w == n:
                return h, w
    raise TiledVAEError(f"cannot infer the spatial layout of a GroupNorm input of shape {tuple(x.shape)}")


def _group_sums(x: Tensor, num_groups: int) -> tuple[Tensor, Tensor, int]:
    """Per-(batch, group) sum and sum of squares of ``x`` (B, C, ...) in float64, and the element
    count per group.  Works group by group so the float64 temporaries stay 1/num_groups of x."""
    b, c = x.shape[:2]
    cpg = c // num_groups
    acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    s1 = torch.empty(b, num_groups, dtype=acc, device=x.device)
    s2 = torch.empty(b, num_groups, dtype=acc, device=x.device)
    dims = tuple(range(1, x.ndim))
    for g in range(num_groups):
        chunk = x[:, g * cpg : (g + 1) * cpg].to(acc)
        s1[:, g] = chunk.sum(dim=dims)
        s2[:, g] = chunk.square_().sum(dim=dims)
        del chunk
    n = cpg * math.prod(x.shape[2:])
    return s1.to("cpu", torch.float64), s2.to("cpu", torch.float64), n


def _moments(s1: Tensor, s2: Tensor, n: int) -> tuple[Tensor, Tensor]:
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min_(0.0)
    return mean, var


def _frozen_group_norm(x: Tensor, module: nn.GroupNorm, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of ``x`` with given per-(batch, group) mean/var; computed in float32, cast back."""
    b, c = x.shape[:2]
    g = module.num_groups
    if tuple(mean.shape) != (b, g) or tuple(var.shape) != (b, g):
        raise TiledVAEError(
            f"frozen GroupNorm statistics have shape {tuple(mean.shape)}, expected (batch, groups) = {(b, g)}"
        )
    cpg = c // g
    bshape = (b, c) + (1,) * (x.ndim - 2)
    rstd = torch.rsqrt(var.to(torch.float64) + module.eps)
    mean_c = mean.to(torch.float64).repeat_interleave(cpg, dim=1).to(x.device, torch.float32)
    scale = rstd.repeat_interleave(cpg, dim=1).to(x.device, torch.float32)
    if module.weight is not None:
        scale = scale * module.weight.to(torch.float32)
    y = x.to(torch.float32, copy=True)
    y.sub_(mean_c.view(bshape)).mul_(scale.view(bshape))
    if module.bias is not None:
        y.add_(module.bias.to(torch.float32).view((1, c) + (1,) * (x.ndim - 2)))
    return y.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# 1b. GroupNorm synchronisation (swapped forwards)
# ------------------------------------------------------------------------------------------------

_MISSING = object()


class _GroupNormSync:
    """Context manager that swaps the ``forward`` of every ``nn.GroupNorm`` under ``root``.

    The replacement dispatches on the controller's state: frozen statistics for modules in
    ``self.frozen``; accumulation of core-region sums followed by :class:`_StopForward` for the
    first un-frozen module when ``self.accumulating``; recording of the module's own statistics
    when ``self.recording`` is a dict; otherwise the original forward.  The original ``forward``
    (normally the class method, i.e. no instance attribute) is restored exactly on exit, also
    after an exception.  With ``strict`` every module must be called at most once per pass
    (:meth:`begin_pass`) and, for a complete pass, exactly once (:meth:`check_complete`).
    """

    def __init__(self, root: nn.Module, *, strict: bool = True):
        self.root = root
        self.norms: dict[str, nn.GroupNorm] = {
            name: m for name, m in root.named_modules() if isinstance(m, nn.GroupNorm)
        }
        self.strict = strict
        self.frozen: dict[str, tuple[Tensor, Tensor]] = {}
        self.recording: dict[str, tuple[Tensor, Tensor]] | None = None
        self.accumulating = False
        self.target: str | None = None
        self.acc: list = [None, None, 0]  # S1, S2, n of the target layer
        self.in_hw: tuple[int, int] = (0, 0)  # size of the current tile's input
        self.core: tuple[int, int, int, int] = (0, 0, 0, 0)  # tile-local core box (y0, y1, x0, x1)
        self.calls: dict[str, int] = {}
        self._saved: dict[str, object] = {}

    # -- installation -----------------------------------------------------------------------------
    def __enter__(self) -> "_GroupNormSync":
        try:
            for name, m in self.norms.items():
                self._saved[name] = m.__dict__.get("forward", _MISSING)
                m.forward = self._make_forward(name, m, m.forward)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for name, saved in self._saved.items():
            m = self.norms[name]
            if saved is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.forward = saved
        self._saved.clear()

    def _make_forward(self, name: str, module: nn.GroupNorm, original: Callable[[Tensor], Tensor]):
        def forward(x: Tensor) -> Tensor:
            return self._dispatch(name, module, original, x)

        return forward

    # -- passes -----------------------------------------------------------------------------------
    def begin_pass(self, in_hw: tuple[int, int] = (0, 0), core: tuple[int, int, int, int] = (0, 0, 0, 0)):
        self.calls = {}
        self.in_hw = in_hw
        self.core = core

    def check_complete(self) -> None:
        if not self.strict:
            return
        bad = {n: self.calls.get(n, 0) for n in self.norms if self.calls.get(n, 0) != 1}
        if bad:
            raise TiledVAEError(
                "tiled VAE assumes every GroupNorm is called exactly once per forward; "
                f"call counts that differ: {bad}"
            )

    # -- dispatch ---------------------------------------------------------------------------------
    def _dispatch(self, name: str, module: nn.GroupNorm, original, x: Tensor) -> Tensor:
        count = self.calls[name] = self.calls.get(name, 0) + 1
        if self.strict and count > 1:
            raise TiledVAEError(
                f"GroupNorm {name!r} was called {count} times in one forward; tiled VAE assumes every "
                "GroupNorm is called exactly once per forward"
            )
        if name in self.frozen:
            return _frozen_group_norm(x, module, *self.frozen[name])
        if self.accumulating:
            if self.target is None:
                self.target = name
            elif self.target != name:
                raise TiledVAEError(
                    f"GroupNorm call order differs between tiles ({name!r} reached before {self.target!r})"
                )
            self._accumulate(module, x)
            raise _StopForward
        if self.recording is not None:
            s1, s2, n = _group_sums(x, module.num_groups)
            self.recording[name] = _moments(s1, s2, n)
        return original(x)

    def _accumulate(self, module: nn.GroupNorm, x: Tensor) -> None:
        h, w = _spatial_hw(x, self.in_hw)
        y0, y1 = _map_interval(self.core[0], self.core[1], self.in_hw[0], h)
        x0, x1 = _map_interval(self.core[2], self.core[3], self.in_hw[1], w)
        region = x.reshape(x.shape[0], x.shape[1], h, w)[:, :, y0:y1, x0:x1]
        s1, s2, n = _group_sums(region, module.num_groups)
        if self.acc[0] is None:
            self.acc = [s1, s2, n]
        else:
            self.acc[0] += s1
            self.acc[1] += s2
            self.acc[2] += n


@contextlib.contextmanager
def frozen_group_norms(
    module: nn.Module, stats: Mapping[str, tuple[Tensor, Tensor]]
) -> Iterator[None]:
    """Within the context, the GroupNorms of ``module`` named in ``stats`` normalise with the given
    statistics instead of their input's own.

    ``stats`` maps a qualified module name (as in ``module.named_modules()``) to ``(mean, var)``,
    each of shape ``(batch, num_groups)``.  GroupNorms not named run normally (so a subset can be
    frozen, e.g. for a hybrid exact/fast scheme).  The frozen forward computes
    ``(x - mean) / sqrt(var + eps) * weight + bias`` in float32 and casts back to the input dtype.
    The modules' original ``forward`` is restored on exit, also after an exception.
    """
    sync = _GroupNormSync(module, strict=False)
    unknown = sorted(set(stats) - set(sync.norms))
    if unknown:
        raise InvalidArgumentError(f"no GroupNorm named {unknown} in the module")
    sync.frozen = {k: (v[0], v[1]) for k, v in stats.items()}
    with sync:
        yield


# ------------------------------------------------------------------------------------------------
# 1c. Shared tiled driver
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tile:
    core: tuple[int, int, int, int]  # global input coords (y0, y1, x0, x1)
    box: tuple[int, int, int, int]  # global input box (y0, y1, x0, x1)

    @property
    def in_hw(self) -> tuple[int, int]:
        return self.box[1] - self.box[0], self.box[3] - self.box[2]

    @property
    def local_core(self) -> tuple[int, int, int, int]:
        by, bx = self.box[0], self.box[2]
        return self.core[0] - by, self.core[1] - by, self.core[2] - bx, self.core[3] - bx


def _make_tiles(rows, cols) -> list[_Tile]:
    return [
        _Tile(core=(r[0], r[1], c[0], c[1]), box=(r[2], r[3], c[2], c[3])) for r in rows for c in cols
    ]


def _full_channel_stats(x: Tensor) -> tuple[Tensor, ...]:
    """Per-(batch, channel) mean, std, min, max of ``x`` (B, C, H, W), streamed in row chunks in float64."""
    b, c, h, w = x.shape
    s1 = torch.zeros(b, c, dtype=torch.float64)
    s2 = torch.zeros(b, c, dtype=torch.float64)
    lo = torch.full((b, c), math.inf, dtype=torch.float64)
    hi = torch.full((b, c), -math.inf, dtype=torch.float64)
    rows = max(1, (1 << 22) // max(1, b * c * w))
    for r in range(0, h, rows):
        chunk = x[:, :, r : r + rows].to("cpu", torch.float64)
        s1 += chunk.sum(dim=(2, 3))
        s2 += chunk.square().sum(dim=(2, 3))
        lo = torch.minimum(lo, chunk.amin(dim=(2, 3)))
        hi = torch.maximum(hi, chunk.amax(dim=(2, 3)))
        del chunk
    mean, var = _moments(s1, s2, h * w)
    return mean, var.sqrt(), lo, hi


def _fast_input(x: Tensor, long_side: int, multiple: int) -> Tensor:
    """Nearest-exact downsample of ``x`` so its long side is about ``long_side`` (sizes rounded to
    ``multiple``), re-standardised per (batch, channel) to the full ``x``'s mean/std and clamped
    to its min/max.  Returned in float32 on ``x``'s device."""
    b, c, h, w = x.shape
    scale = min(1.0, long_side / max(h, w))
    th = max(multiple, int(round(h * scale / multiple)) * multiple) if scale < 1 else h
    tw = max(multiple, int(round(w * scale / multiple)) * multiple) if scale < 1 else w
    mean, std, lo, hi = _full_channel_stats(x)
    small = F.interpolate(x.to(torch.float32), size=(th, tw), mode="nearest-exact")
    view = (b, c, 1, 1)
    dev = small.device
    s_mean = small.mean(dim=(2, 3), dtype=torch.float64).cpu()
    s_std = small.to(torch.float64).std(dim=(2, 3), unbiased=False).cpu()
    gain = torch.where(s_std > 0, std / s_std.clamp_min(1e-30), torch.ones_like(std))
    small = (small - s_mean.to(dev, torch.float32).view(view)) * gain.to(dev, torch.float32).view(view)
    small = small + mean.to(dev, torch.float32).view(view)
    small = torch.maximum(small, lo.to(dev, torch.float32).view(view))
    small = torch.minimum(small, hi.to(dev, torch.float32).view(view))
    return small


def _tiled_run(
    root: nn.Module,
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    tiles: list[_Tile],
    out: Tensor,
    *,
    stats: str,
    fast_input: Callable[[], Tensor],
    progress: bool,
    desc: str,
) -> Tensor:
    """Run ``forward`` tile by tile with synchronised GroupNorms and write the cores into ``out``."""
    param = next(root.parameters())
    device, dtype = param.device, param.dtype
    H, W = x.shape[-2:]
    Ho, Wo = out.shape[-2:]
    n_norms = len(_GroupNormSync(root).norms)
    total = len(tiles) * (n_norms + 1 if stats == "exact" else 1) + (1 if stats == "fast" else 0)

    from ..progress import run_progress

    # inside a job (anysize.generate, ...) the tiles count in its one bar, else in one of their own
    with _GroupNormSync(root) as sync, run_progress("", progress, leave=True) as bar:
        bar.part(total, desc)

        def load(t: _Tile) -> Tensor:
            return x[:, :, t.box[0] : t.box[1], t.box[2] : t.box[3]].to(device, dtype)

        if stats == "fast":
            small = fast_input().to(device, dtype)
            sync.recording = {}
            sync.begin_pass()
            forward(small)
            del small
            sync.check_complete()
            recorded, sync.recording = sync.recording, None
            bar.update(1)
            if all(torch.isfinite(m).all() and torch.isfinite(v).all() for m, v in recorded.values()):
                sync.frozen = recorded
            else:
                warnings.warn("tiled VAE: fast GroupNorm statistics are not finite; falling back to exact mode")
                stats = "exact"
                bar.grow(len(tiles) * n_norms)  # each tile's GroupNorm passes, then its output pass

        if stats == "exact":
            sync.frozen = {}
            for _ in range(n_norms):
                sync.accumulating, sync.target, sync.acc = True, None, [None, None, 0]
                for t in tiles:
                    sync.begin_pass(t.in_hw, t.local_core)
                    z = load(t)
                    try:
                        forward(z)
                    except _StopForward:
                        pass
                    else:
                        sync.check_complete()
                        raise TiledVAEError("a forward finished without reaching an un-frozen GroupNorm")
                    finally:
                        del z
                    bar.update(1)
                s1, s2, n = sync.acc
                sync.frozen[sync.target] = _moments(s1, s2, n)
                sync.accumulating, sync.acc = False, [None, None, 0]

        for t in tiles:
            sync.begin_pass(t.in_hw, t.local_core)
            z = load(t)
            y = forward(z)
            del z
            sync.check_complete()
            by0, by1 = _map_interval(t.box[0], t.box[1], H, Ho)
            bx0, bx1 = _map_interval(t.box[2], t.box[3], W, Wo)
            if tuple(y.shape[-2:]) != (by1 - by0, bx1 - bx0):
                raise TiledVAEError(
                    f"tile output of shape {tuple(y.shape)} does not match its input box {t.in_hw} "
                    f"at the expected scale ({by1 - by0}x{bx1 - bx0})"
                )
            oy0, oy1 = _map_interval(t.core[0], t.core[1], H, Ho)
            ox0, ox1 = _map_interval(t.core[2], t.core[3], W, Wo)
            ly0, ly1, lx0, lx1 = oy0 - by0, oy1 - by0, ox0 - bx0, ox1 - bx0
            out[:, :, oy0:oy1, ox0:ox1] = y[:, :, ly0:ly1, lx0:lx1].to(out.device, out.dtype)
            del y
            bar.update(1)
    return out


def _check_common(tile: int, halo: int, stats: str) -> None:
    check_choice("VAE statistics mode", stats, VAE_STATS_MODES)
    if int(tile) < 1:
        raise InvalidArgumentError(f"tile must be >= 1, got {tile}")
    if int(halo) < 0:
        raise InvalidArgumentError(f"halo must be >= 0, got {halo}")


def _vae_device_dtype(vae: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(vae.parameters())
    return p.device, p.dtype


# ------------------------------------------------------------------------------------------------
# 1d. Public entry points
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def tiled_decode(
    vae: nn.Module,
    latents: Tensor,
    *,
    tile: int = 64,
    halo: int = 11,
    stats: str = "exact",
    progress: bool = False,
    fast_size: int | None = None,
    out_device: torch.device | str | None = None,
) -> Tensor:
    """Memory-bounded ``vae.decode(latents).sample`` for a diffusers ``AutoencoderKL``.

    Args:
        vae: the autoencoder (its ``post_quant_conv`` is applied when present; ``force_upcast`` and
            the latent scaling are the caller's business).
        latents: ``(B, C, h, w)`` un-scaled latents, i.e. exactly what goes into ``vae.decode``.
            May live on another device than the VAE (each tile is moved to the VAE's device/dtype).
        tile: core tile size in latent pixels (the real core is ``ceil((L - 2*halo)/n)``).
        halo: context added on every side of a core, in latent pixels.
        stats: ``"exact"`` — whole-image GroupNorm statistics by recomputation (about
            ``#GroupNorms/2 + 1`` tiled passes, 15x for the SD VAE); ``"fast"`` — statistics
            estimated on a downsampled copy (one small extra pass).
        progress: show a tqdm progress bar.
        fast_size: long side (latent px) of the downsampled copy used by ``"fast"``; default ``tile``.
        out_device: where the output is allocated; default ``latents.device``.

    Returns:
        ``(B, out_channels, h*f, w*f)`` in the VAE's dtype, ``f = 2**(len(block_out_channels)-1)``.
        When the grid is a single tile (``h, w <= tile + 2*halo``) this is a plain decode.

    Approximations (both vanish as the halo/tile grow):
        * Convolutions near a tile edge see zero padding instead of the neighbour; cores are exact
          only when ``halo`` covers the decoder's receptive field (about 17 latent px for the
          SD VAE; 11 captures nearly all of the effect).
        * The mid-block self-attention is global in an untiled decode but only sees the tile plus
          halo here.  Its GroupNorm is synchronised like the others; the attention mixing itself
          is local.  Tests measure the resulting difference.
    """
    _check_common(tile, halo, stats)
    if latents.ndim != 4:
        raise InvalidSizeError(f"latents must be (B, C, h, w), got shape {tuple(latents.shape)}")
    b, _, h, w = latents.shape
    if h < 1 or w < 1:
        raise InvalidSizeError(f"latent size must be positive, got {h}x{w}")
    f = vae_scale_factor(vae)
    device, dtype = _vae_device_dtype(vae)
    out_device = latents.device if out_device is None else torch.device(out_device)
    post = getattr(vae, "post_quant_conv", None)

    def forward(z: Tensor) -> Tensor:
        if post is not None:
            z = post(z)
        return vae.decoder(z)

    tiles = _make_tiles(_axis_grid(h, int(tile), int(halo)), _axis_grid(w, int(tile), int(halo)))
    if len(tiles) == 1:
        return forward(latents.to(device, dtype)).to(out_device)

    out_ch = int(getattr(vae.config, "out_channels", 3))
    out = torch.empty(b, out_ch, h * f, w * f, dtype=dtype, device=out_device)
    long_side = int(fast_size or tile)
    return _tiled_run(
        vae.decoder,
        forward,
        latents,
        tiles,
        out,
        stats=stats,
        fast_input=lambda: _fast_input(latents, long_side, 1),
        progress=progress,
        desc=f"tiled VAE decode ({stats})",
    )


@torch.no_grad()
def tiled_encode(
    vae: nn.Module,
    images: Tensor,
    *,
    tile: int = 512,
    halo: int = 32,
    stats: str = "exact",
    progress: bool = False,
    fast_size: int | None = None,
    out_device: torch.device | str | None = None,
):
    """Memory-bounded ``vae.encode(images).latent_dist`` for a diffusers ``AutoencoderKL``.

    Args:
        images: ``(B, in_channels, H, W)`` in the VAE's input range ([-1, 1]).  ``H, W >= f``; sizes
            that are not multiples of ``f`` give ``floor(H/f)`` like the encoder itself.
        tile, halo: core tile size and halo in image pixels.  The grid is laid out in latent units
            (``tile // f`` and ``ceil(halo / f)``) so every tile starts on a multiple of ``f`` and
            the encoder's stride-2 downsamplers stay aligned with the untiled encode.
        stats, progress, out_device: as in :func:`tiled_decode`; ``fast_size`` in image pixels.

    Returns:
        diffusers' ``DiagonalGaussianDistribution`` over the posterior moments
        ``(B, 2*latent_channels, H//f, W//f)`` (``quant_conv`` applied when present), so callers
        can take ``.mode()`` or ``.sample(generator)``; ``.parameters`` is the moments tensor.

    The encoder's mid-block attention sees only tile + halo (see :func:`tiled_decode`); the halo
    (default 32 px = 4 latent px) is smaller than the encoder's receptive field, so differences to
    an untiled encode concentrate near core boundaries.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    _check_common(tile, halo, stats)
    if images.ndim != 4:
        raise InvalidSizeError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, H, W = images.shape
    f = vae_scale_factor(vae)
    if H < f or W < f:
        raise InvalidSizeError(f"image {H}x{W} is smaller than the VAE factor {f}")
    device, dtype = _vae_device_dtype(vae)
    out_device = images.device if out_device is None else torch.device(out_device)
    quant = getattr(vae, "quant_conv", None)

    def forward(x: Tensor) -> Tensor:
        m = vae.encoder(x)
        return quant(m) if quant is not None else m

    h, w = H // f, W // f
    t_lat, h_lat = max(1, int(tile) // f), -(-int(halo) // f)

    def to_pixels(axis, full):
        return [
            (c0 * f, full if c1 == axis[-1][1] else c1 * f, b0 * f, full if b1 == axis[-1][3] else b1 * f)
            for c0, c1, b0, b1 in axis
        ]

    tiles = _make_tiles(
        to_pixels(_axis_grid(h, t_lat, h_lat), H), to_pixels(_axis_grid(w, t_lat, h_lat), W)
    )
    if len(tiles) == 1:
        moments = forward(images.to(device, dtype)).to(out_device)
        return DiagonalGaussianDistribution(moments)

    c_out = 2 * int(vae.config.latent_channels)
    out = torch.empty(b, c_out, h, w, dtype=dtype, device=out_device)
    long_side = int(fast_size or tile)
    moments = _tiled_run(
        vae.encoder,
        forward,
        images,
        tiles,
        out,
        stats=stats,
        fast_input=lambda: _fast_input(images, long_side, f),
        progress=progress,
        desc=f"tiled VAE encode ({stats})",
    )
    return DiagonalGaussianDistribution(moments)


# ================================================================================================
# 2. Tile grids for tiled diffusion (reserved; added later)
# ================================================================================================

"""Neighborhood Patch Attention (NPA, ScaleDiff §2 of the spec) as one reversible patch.

Koh et al., "ScaleDiff: Higher-Resolution Image Synthesis via Efficient and Model-Agnostic
Diffusion", NeurIPS 2025 (arXiv 2510.25818); official code KSH00906/ScaleDiff.

    with anysize.patch(pipe, "npa"):                   # a stock diffusers pipeline (U-Net, SD3, FLUX)
        image = pipe(prompt, height=2048, width=2048).images[0]

Every self-attention layer whose token grid (H, W) is larger than its *window* (the grid the same
layer has at the model's native size, h x w) splits its queries into non-overlapping
``⌊h/2⌋ x ⌊w/2⌋`` patches; each patch attends to the ``h x w`` key/value window centred on
it (slid inward at the borders), i.e. to exactly as many keys as the layer saw in training. Q/K/V
projections, output projections and every other layer run once on the whole canvas.

* U-Net (SD 1.x / 2.x / SDXL): the ``attn1`` (self-attention) of every transformer block; the
  window is the native latent divided by the block's down-sampling factor.
* FLUX: the joint attention of every double- and single-stream block on the packed token grid
  (native latent / 2). Text tokens are copied into every patch (queries ``[text; patch]``, keys
  ``[text; window]``), their outputs averaged over the patches. Image q/k keep the RoPE rotation
  of their absolute canvas position; the text copy of patch i is rotated by the phase of its
  window's top-left token, so text-to-image offsets inside a window are those of a native canvas.
* SD3: the same joint attention without RoPE. SD3's positions are added once at the patch embed
  from a fixed sin-cos table of ``pos_embed_max_size`` patches per side (192: 3072 px); while the
  patch is open a canvas beyond it gets the same formula extended outward with the same spacing
  (:func:`extended_sincos_table`, checked to contain the stored table exactly in its centre, so
  every canvas that fitted gets the same positions as before).

Optional query shift (``shift=True``, the official FLUX code's ``query_random_jitter``): for every
attention call a random ``(o_h, o_w)``, ``o ∈ {0..p}`` with ``p`` the query patch side, is drawn;
as in the official code the query grid is padded by one whole patch on each axis, to
``(H + p_h) x (W + p_w)``, the real queries placed at ``(o_h, o_w)``, and tiled by patches:
``ceil((H + p_h)/p_h) x ceil((W + p_w)/p_w)`` of them (``(H/p + 1) x (W/p + 1)`` when ``p``
divides the grid, e.g. ``(2s + 1)²`` at scale s), whatever the offsets, 0 included. A patch that
lies wholly in the padding (the last row for ``o_h = 0``, the first for ``o_h = p``) still runs:
its image outputs are dropped, but its text outputs count in the text mean over the patches, as
officially. Offsets come from generators seeded with each image's seed.

A layer whose grid fits its window (the native size and below) keeps its own processor, so the
patch changes nothing there; leaving the context restores the original processors.

Deliberate differences from the official code:

* The window comes from the model's native latent size and each layer's down-sampling factor,
  for any base size and aspect ratio (official: hard-coded 64/32 for SDXL, 64 for FLUX).
* Canvases not divisible by the query patch: the last patch row/column is partial (its missing
  queries are padding whose outputs are dropped); along an axis shorter than the window the
  whole axis is one patch (official: FLUX assumes token grids divisible by 32).
* Batches: image and text copies are indexed ``(batch, patch)`` consistently, so a batch of
  different prompts is right (official FLUX: correct only for batch size 1); each image of a
  batch draws its own query shift from its own seed (official: global RNG, one per call).
* SDXL gets the query shift too when asked (official: FLUX only); the default stays off here and
  the ``scalediff`` method chooses per family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

from ..devices import TensorKeyed, upload
from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from ..options import Options, option
from ..seeds import seed_list
from ._undo import ReversiblePatch, Undo
from .msw_msa import feature_hw

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")


# ----------------------------------------------------------------------------- geometry (pure)


def axis_plan(length: int, window: int, offset: int | None = None) -> tuple[int, list[int], list[int]]:
    """One axis of the NPA geometry.

    Returns ``(patch, starts, corners)``: the query patch size, the start of every query patch in
    real coordinates and the corner of its key/value window,
    ``clamp(start - (window - patch) // 2, 0, length - window)``. Without a query shift
    (``offset`` None) the axis is tiled from 0: ``ceil(length / patch)`` patches. With one
    (``offset`` o in 0..patch, 0 included) the queries sit at o on an axis padded to
    ``length + patch``, as the official ``query_random_jitter``: ``ceil((length + patch) / patch)``
    patches whatever o is (``length/patch + 1`` when the patch divides the length), starts
    ``a·patch - o``; a patch that lies wholly in the padding (the last one for o = 0, the first for
    o = patch) is kept: its queries are all padding, but its text rows still count in the text mean.
    An axis shorter than the window is one patch with the whole axis as its window (no shift).
    """
    if length < 1 or window < 1:
        raise InvalidArgumentError(f"NPA needs a positive length and window, got {length} and {window}")
    if length < window:
        return length, [0], [0]
    patch = max(1, window // 2)
    if offset is not None and not 0 <= offset <= patch:
        raise InvalidArgumentError(f"query shift {offset} is outside 0..{patch}")
    margin = (window - patch) // 2
    if offset is None:
        n, offset = -(-length // patch), 0
    else:
        n = -(-(length + patch) // patch)
    starts = [a * patch - offset for a in range(n)]
    corners = [min(max(s - margin, 0), length - window) for s in starts]
    return patch, starts, corners


class NPAIndex(NamedTuple):
    """Token indices of an NPA layout on a raster (row-major) ``grid`` of tokens.

    ``query`` (N, P): token of every query slot of every patch, -1 for padding; ``inverse`` (L,):
    for every token its slot in ``query.flatten()``; ``kv`` (N, K): tokens of every patch's key
    window; ``corners``: (row, col) of each window's top-left token; patches are row-major.
    """

    grid: tuple[int, int]
    window: tuple[int, int]
    patch: tuple[int, int]
    query: Tensor
    inverse: Tensor
    kv: Tensor
    corners: list[tuple[int, int]]

    @property
    def patches(self) -> int:
        return self.query.shape[0]


def neighborhood_indices(grid: tuple[int, int], window: tuple[int, int],
                         offset: tuple[int, int] | None = None) -> NPAIndex:
    """The NPA layout of a ``grid`` = (H, W) token map with native ``window`` = (h, w) (see module
    doc); ``offset`` (o_h, o_w) is a query shift (None: none; (0, 0) is a shift by zero, which
    still pads each axis by a patch, see :func:`axis_plan`)."""
    H, W = grid
    wh, ww = min(window[0], H), min(window[1], W)
    oh, ow = (None, None) if offset is None else offset
    ph, rows, crows = axis_plan(H, window[0], oh)
    pw, cols, ccols = axis_plan(W, window[1], ow)
    ar_h, ar_w = torch.arange(ph), torch.arange(pw)
    kh, kw = torch.arange(wh), torch.arange(ww)
    query, kv, corners = [], [], []
    for r0, cr in zip(rows, crows):
        for c0, cc in zip(cols, ccols):
            r, c = r0 + ar_h, c0 + ar_w
            valid = ((r >= 0) & (r < H))[:, None] & ((c >= 0) & (c < W))[None, :]
            q = (r[:, None] * W + c[None, :]).masked_fill(~valid, -1)
            query.append(q.flatten())
            kv.append(((cr + kh)[:, None] * W + (cc + kw)[None, :]).flatten())
            corners.append((cr, cc))
    query_t = torch.stack(query)
    flat = query_t.flatten()
    slots = (flat >= 0).nonzero().flatten()
    inverse = torch.empty(H * W, dtype=torch.long)
    inverse[flat[slots]] = slots
    return NPAIndex((H, W), (wh, ww), (ph, pw), query_t, inverse, torch.stack(kv), corners)


# ----------------------------------------------------------------------------- attention core


def npa_attention(q: Tensor, k: Tensor, v: Tensor, index: NPAIndex, *, text: tuple[Tensor, Tensor, Tensor] | None = None,
                  chunk: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Neighborhood patch attention of image tokens ``q, k, v`` (B, heads, L, d), raster order.

    ``text`` = (tq, tk, tv), each (B, heads, Lt, d) or, per patch, (B, heads, N, Lt, d): text
    tokens joined to every patch (queries and keys), their outputs averaged over the patches.
    ``chunk`` limits the patches per attention call (memory). Returns (image out, text out or None).
    """
    B, Hh, L, d = q.shape
    N, P = index.query.shape
    dev = q.device
    qi = index.query.clamp(min=0).to(dev)
    ki = index.kv.to(dev)
    step = N if not chunk else max(1, int(chunk))
    outs, touts = [], []
    for s in range(0, N, step):
        sl = slice(s, min(N, s + step))
        n = sl.stop - sl.start
        qq = q[:, :, qi[sl].flatten()].unflatten(2, (n, P))  # (B, h, n, P, d)
        kk = k[:, :, ki[sl].flatten()].unflatten(2, (n, -1))
        vv = v[:, :, ki[sl].flatten()].unflatten(2, (n, -1))
        if text is not None:
            tq, tk, tv = (t[:, :, sl] if t.ndim == 5 else t[:, :, None].expand(-1, -1, n, -1, -1) for t in text)
            lt = tq.shape[3]
            qq = torch.cat([tq, qq], dim=3)
            kk = torch.cat([tk, kk], dim=3)
            vv = torch.cat([tv, vv], dim=3)
        # (B, h, n, S, d) -> (B*n, h, S, d): one batched call over images x patches
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2).flatten(0, 1) for t in (qq, kk, vv)))
        o = o.unflatten(0, (B, n)).transpose(1, 2)  # (B, h, n, S, d)
        if text is not None:
            touts.append(o[:, :, :, :lt].sum(dim=2))
            o = o[:, :, :, lt:]
        outs.append(o)
    o = torch.cat(outs, dim=2).flatten(2, 3)  # (B, h, N*P, d)
    img = o[:, :, index.inverse.to(dev)]
    txt = None
    if text is not None:
        txt = (torch.stack(touts).sum(0) / N).to(q.dtype)
    return img, txt


# ----------------------------------------------------------------------------- SD3 positions


def extended_sincos_table(pos_embed_module, side: int) -> Tensor | None:
    """SD3's sin-cos position table grown symmetrically to at least ``side`` patches per side.

    The stored table (M per side) places patch k at ``k / (M / base) / interpolation_scale``; the
    grown one continues that grid by ``e`` patches on every side (M + 2e, so the pipeline's centred
    crops of the old sizes stay where they were). None if the stored table is not this formula
    (e.g. a learned one), which then cannot be extended.
    """
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    pe = pos_embed_module
    M = pe.pos_embed_max_size
    stored = pe.pos_embed
    dim = stored.shape[-1]
    e = max(0, -(-(side - M) // 2))
    size = M + 2 * e
    k = (torch.arange(size, dtype=torch.float32) - e) / (M / pe.base_size) / pe.interpolation_scale
    grid = torch.stack(torch.meshgrid(k, k, indexing="xy")).reshape(2, 1, size, size)
    table = get_2d_sincos_pos_embed_from_grid(dim, grid, output_type="pt").reshape(size, size, dim)
    table = table.float()  # the formula computes in float64
    centre = table[e : e + M, e : e + M].reshape(1, M * M, dim)
    if not torch.allclose(centre, stored.detach().float().cpu(), atol=1e-4):
        return None
    return table.reshape(1, size * size, dim).to(device=stored.device, dtype=stored.dtype)


# ----------------------------------------------------------------------------- the patch


@dataclasses.dataclass
class NPASettings(Options):
    window: int | tuple[int, int] | None = option(None, "key/value window", kind="int", low=1, pair=True,
                                                  unit="native latent px", unset="the model's native latent size")
    shift: bool = option(False, "random query shift per attention call (official FLUX code: on; paper evaluation: off)")
    chunk: int | None = option(None, "patches per attention call", kind="int", low=1, unset="all at once")
    apply_at_native: bool = option(False, "also partition layers whose grid fits their window (then equal to full "
                                          "attention up to float rounding; for tests)")


class NPAPatch(ReversiblePatch):
    """The reversible NPA change of one network; a context manager (see module docstring).

    ``seed`` (an integer or one per image) seeds the query-shift generators; row r of a network
    batch (which may hold the CFG halves) is image ``r % len(seed)``.
    """

    name = "npa"

    def __init__(self, adapter, *, seed: int | Sequence[int] = 0, **options):
        self.settings = NPASettings.from_kwargs(options, owner="patch 'npa'", also=("seed",))
        seeds = seed_list(seed)
        if adapter.family not in FAMILIES:
            raise InvalidArgumentError(f"npa supports {', '.join(FAMILIES)}, not {adapter.family}")
        self.seeds = seeds
        self.adapter = adapter
        self.network, self.family, native = adapter.network, adapter.family, tuple(adapter.native_latent_size)
        self.dit_patch = adapter.size_multiple // adapter.vae_factor  # tokens per latent px side: 2 for the DiTs
        w = self.settings.window
        self.native = native if w is None else (tuple(w) if isinstance(w, (tuple, list)) else (w, w))
        self._generators = [torch.Generator("cpu") for _ in seeds]
        self._indices: dict[tuple, NPAIndex] = {}  # layouts by (grid, window, offset, device)
        # per network call
        self.latent_hw: tuple[int, int] | None = None
        self.token_grid: tuple[int, int] | None = None  # DiT: the image token grid when raster
        self.text_len = 0
        #: (layer grid, window, patches) of every windowed attention call, for inspection
        self.log: list[tuple] = []

    # ------------------------------------------------------------------ layers
    def _attentions(self):
        net = self.network
        if self.family in ("sd3", "flux"):
            blocks = list(net.transformer_blocks) + list(getattr(net, "single_transformer_blocks", []))
            return [b.attn for b in blocks]
        out = []
        for name, m in net.named_modules():
            if name.endswith("attn1") and hasattr(m, "processor") and not getattr(m, "is_cross_attention", False):
                out.append(m)
        return out

    def _opening(self) -> None:
        for g, s in zip(self._generators, self.seeds):
            g.manual_seed(s)
        self.log.clear()

    def _install(self, undo: Undo) -> None:
        undo.hook(self.network.register_forward_pre_hook(self._before, with_kwargs=True))
        proc = {"sd3": _JointProcessor, "flux": _FluxProcessor}.get(self.family, _SelfProcessor)
        for attn in self._attentions():
            undo.processor(attn, proc(attn.processor, self))

    @staticmethod
    def check_canvas(adapter, latent_hw: tuple[int, int]) -> None:
        """Refuse, before any work, a canvas the patch could not cover: an SD3 canvas beyond a
        position table that is not the sin-cos formula (so it cannot be extended)."""
        if adapter.family != "sd3":
            return
        pe = adapter.network.pos_embed
        m = pe.pos_embed_max_size
        p = adapter.size_multiple // adapter.vae_factor
        if m is None or max(latent_hw) // p <= m:
            return
        if extended_sincos_table(pe, m + 2) is None:
            f = adapter.vae_factor
            raise InvalidArgumentError(
                f"this SD3 model's position table ({m * p * f} px per side) is not the sin-cos formula and cannot be "
                f"extended to {latent_hw[1] * f}x{latent_hw[0] * f}: use at most {m * p * f} px per side"
            )

    def cover(self, latent_hw: tuple[int, int]) -> None:
        """SD3: make the position table cover a ``latent_hw`` canvas for as long as the patch is open
        (done by itself on each network call; an adapter checks sizes before the call, so a method
        driving an adapter calls this first). Other families: nothing to do."""
        if self.family != "sd3" or not self._active:
            return
        pe = self.network.pos_embed
        m = pe.pos_embed_max_size
        side = max(latent_hw) // self.dit_patch
        if m is None or side <= m:
            return
        table = extended_sincos_table(pe, side)
        if table is None:
            raise InvalidArgumentError(
                f"SD3's position table covers {m} patches per side and is not the sin-cos formula, so it cannot be "
                f"extended to {side}: use at most {m * self.dit_patch} latent px per side"
            )
        if not self._undo.has("positions"):
            table0 = pe.pos_embed

            def restore():
                pe.pos_embed, pe.pos_embed_max_size = table0, m

            self._undo.add(restore, "positions")
        pe.pos_embed = table
        pe.pos_embed_max_size = int(round(table.shape[1] ** 0.5))

    # ------------------------------------------------------------------ per call
    def _before(self, module, args, kwargs):
        self.token_grid, self.text_len = None, 0
        if self.family == "flux":
            ids = kwargs.get("img_ids")
            ehs = kwargs.get("encoder_hidden_states")
            self.text_len = 0 if ehs is None else int(ehs.shape[1])
            self.token_grid = _raster_grid(ids) if ids is not None else None  # read once per ids tensor
            return None
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self.family == "sd3":
            p = self.dit_patch
            self.token_grid = (self.latent_hw[0] // p, self.latent_hw[1] // p)
            self.cover(self.latent_hw)
        return None

    def plan(self, tokens: int, batch: int) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]] | None:
        """(grid, window, one query offset per batch row, None without the query shift) for a call on
        ``tokens`` image tokens, or None when the call keeps full attention (grid within the window,
        or an unknown layout)."""
        if self.family in ("sd3", "flux"):
            grid = self.token_grid
            if grid is None or grid[0] * grid[1] != tokens:
                return None
            p = self.dit_patch
            window = (-(-self.native[0] // p), -(-self.native[1] // p))
        else:
            if self.latent_hw is None:
                return None
            grid = feature_hw(tokens, self.latent_hw)
            if grid is None:
                return None
            r = round(math.sqrt(self.latent_hw[0] * self.latent_hw[1] / tokens))
            window = (-(-self.native[0] // r), -(-self.native[1] // r))
        if grid[0] <= window[0] and grid[1] <= window[1] and not self.settings.apply_at_native:
            return None
        offsets = [None] * batch
        if self.settings.shift:
            ph = max(1, window[0] // 2) if grid[0] >= window[0] else 0
            pw = max(1, window[1] // 2) if grid[1] >= window[1] else 0
            per_image = [
                (int(torch.randint(ph + 1, (1,), generator=g)), int(torch.randint(pw + 1, (1,), generator=g)))
                for g in self._generators
            ]
            offsets = [per_image[r % len(per_image)] for r in range(batch)]
        return grid, window, offsets

    def layout(self, grid, window, offset, device) -> NPAIndex:
        """The (cached) layout of a call, its index tensors on ``device``."""
        key = (grid, window, offset, str(device))
        index = self._indices.get(key)
        if index is None:
            index = neighborhood_indices(grid, window, offset)
            index = index._replace(query=upload(index.query, device), inverse=upload(index.inverse, device),
                                   kv=upload(index.kv, device))
            self._indices[key] = index
        return index

    def attend(self, q: Tensor, k: Tensor, v: Tensor, plan, text=None) -> tuple[Tensor, Tensor | None]:
        """NPA for a batch (q, k, v: (B, heads, L, d)); rows with different offsets run apart."""
        grid, window, offsets = plan
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for r, off in enumerate(offsets):
            groups.setdefault(off, []).append(r)
        if len(groups) == 1:
            index = self.layout(grid, window, offsets[0], q.device)
            self.log.append((grid, index.window, index.patches))
            return self._text_hook(q, k, v, index, text)
        img = torch.empty_like(q)
        txt = None
        for off, rows in groups.items():
            index = self.layout(grid, window, off, q.device)
            self.log.append((grid, index.window, index.patches))
            sel = torch.tensor(rows, device=q.device)
            if callable(text):
                t = (lambda index, sel=sel: tuple(x[sel] for x in text(index)))
            else:
                t = None if text is None else tuple(x[sel] for x in text)
            o, ot = self._text_hook(q[sel], k[sel], v[sel], index, t)
            img[sel] = o
            if ot is not None:
                if txt is None:
                    txt = torch.empty(q.shape[0], *ot.shape[1:], dtype=ot.dtype, device=ot.device)
                txt[sel] = ot
        return img, txt

    def _text_hook(self, q, k, v, index, text):
        if callable(text):  # per-patch text (FLUX: rotated by each window's corner)
            text = text(index)
        return npa_attention(q, k, v, index, text=text, chunk=self.settings.chunk)


_RASTER_GRIDS = TensorKeyed()


def _raster_grid(ids: Tensor) -> tuple[int, int] | None:
    """(H, W) if the (L, 3) position ids are a raster grid (row-major, unit steps), else None.
    Reading the ids waits for the device, so the answer is kept per ids tensor (the adapters and
    the pipelines make one per window size and reuse it)."""
    hit = _RASTER_GRIDS.get(ids, _UNKNOWN)
    if hit is _UNKNOWN:
        hit = _read_raster_grid(ids)
        _RASTER_GRIDS.put(ids, hit)
    return hit


_UNKNOWN = object()


def _read_raster_grid(ids: Tensor) -> tuple[int, int] | None:
    if ids.ndim == 3:
        ids = ids[0]
    L = ids.shape[0]
    rows, cols = ids[:, 1].round().long(), ids[:, 2].round().long()
    r0, c0 = int(rows.min()), int(cols.min())
    H, W = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    if H * W != L:
        return None
    ar = torch.arange(L, device=ids.device)
    if not (torch.equal(rows - r0, ar // W) and torch.equal(cols - c0, ar % W)):
        return None
    return H, W


# ----------------------------------------------------------------------------- processors


class _Processor:
    def __init__(self, inner, patch: NPAPatch):
        self.inner = inner
        self.patch = patch

    def __getattr__(self, name):  # anything diffusers asks of a processor, e.g. _attention_backend
        if name in ("inner", "patch"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class _SelfProcessor(_Processor):
    """U-Net ``attn1``: NPA when the layer's map is larger than its window, else the original."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        plan = None
        simple = (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                  and getattr(attn, "spatial_norm", None) is None and getattr(attn, "group_norm", None) is None)
        if simple:
            plan = self.patch.plan(hidden_states.shape[1], hidden_states.shape[0])
        if plan is None:
            kw = dict(kwargs)
            if temb is not None:
                kw["temb"] = temb
            return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kw)
        residual = hidden_states
        B = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.view(B, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        o, _ = self.patch.attend(q, k, v, plan)
        o = o.transpose(1, 2).reshape(B, -1, attn.heads * d).to(q.dtype)
        o = attn.to_out[1](attn.to_out[0](o))
        if attn.residual_connection:
            o = o + residual
        return o / attn.rescale_output_factor


class _JointProcessor(_Processor):
    """SD3 joint attention (image tokens first, then context; no RoPE)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        plan = None
        if attention_mask is None and hidden_states.ndim == 3:
            plan = self.patch.plan(hidden_states.shape[1], hidden_states.shape[0])
        if plan is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        B = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.view(B, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        text = None
        if encoder_hidden_states is not None:
            tq, tk, tv = (p(encoder_hidden_states).view(B, -1, attn.heads, d).transpose(1, 2)
                          for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                tq = attn.norm_added_q(tq)
            if attn.norm_added_k is not None:
                tk = attn.norm_added_k(tk)
            text = (tq, tk, tv)
        o, to = self.patch.attend(q, k, v, plan, text)
        o = attn.to_out[1](attn.to_out[0](o.transpose(1, 2).reshape(B, -1, attn.heads * d).to(q.dtype)))
        if encoder_hidden_states is None:
            return o
        to = to.transpose(1, 2).reshape(B, -1, attn.heads * d).to(q.dtype)
        if not attn.context_pre_only:
            to = attn.to_add_out(to)
        return o, to


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """FLUX's real-valued RoPE (interleaved pairs) with cos/sin broadcastable to x."""
    re, im = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-im, re], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class _FluxProcessor(_Processor):
    """FLUX joint attention, double-stream (text separate) and single-stream ([text; image])."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs):
        patch = self.patch
        lt = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else patch.text_len
        img_tokens = hidden_states.shape[1] - (0 if encoder_hidden_states is not None else lt)
        plan = None
        if attention_mask is None and not kwargs and not getattr(attn, "fused_projections", False) and hidden_states.ndim == 3:
            plan = patch.plan(img_tokens, hidden_states.shape[0])
        if plan is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)

        def heads(t):
            return t.unflatten(-1, (-1, attn.head_dim))  # (B, L, h, d)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            tq = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
            tk = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
            tv = heads(attn.add_v_proj(encoder_hidden_states))
        else:  # single stream: split [text; image]
            tq, q = q[:, :lt], q[:, lt:]
            tk, k = k[:, :lt], k[:, lt:]
            tv, v = v[:, :lt], v[:, lt:]
        cos = sin = None
        if image_rotary_emb is not None:
            cos, sin = image_rotary_emb  # (lt + L, d): text rows first
            ct, st = cos[:lt].to(q.device)[None, :, None], sin[:lt].to(q.device)[None, :, None]
            ci, si = cos[lt:].to(q.device)[None, :, None], sin[lt:].to(q.device)[None, :, None]
            q, k = _rotate(q, ci, si), _rotate(k, ci, si)
            tq, tk = _rotate(tq, ct, st), _rotate(tk, ct, st)
        q, k, v, tq, tk, tv = (t.transpose(1, 2) for t in (q, k, v, tq, tk, tv))  # (B, h, L, d)

        def text_for(index: NPAIndex):
            if cos is None:
                return tq, tk, tv
            # the text copy of patch i is rotated by the phase of its window's top-left token
            W = index.grid[1]
            corner = upload(torch.tensor([r * W + c for r, c in index.corners]), q.device) + lt
            cc, sc = cos[corner].to(q.device)[:, None], sin[corner].to(q.device)[:, None]  # (N, 1, d)
            rq = _rotate(tq[:, :, None], cc, sc)  # (B, h, N, lt, d)
            rk = _rotate(tk[:, :, None], cc, sc)
            return rq, rk, tv

        o, to = patch.attend(q, k, v, plan, text_for)
        o = o.transpose(1, 2).flatten(2, 3).to(q.dtype)
        to = to.transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return torch.cat([to, o], dim=1)
        o = attn.to_out[1](attn.to_out[0](o.contiguous()))
        return o, attn.to_add_out(to.contiguous())

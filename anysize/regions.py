"""Regional prompts: parts of the canvas, each with its own prompt (MultiDiffusion's region-based
generation, Mixture of Diffusers' canvas of prompted tiles).

A :class:`Region` is a box ``(x, y, width, height)`` in pixels or a mask of the canvas size, with a
prompt, an optional negative prompt (default: the image's own), a weight, a feather width in pixels
and a bootstrapping fraction. The image's own prompt is the background prompt: it covers what the
regions leave uncovered. Per latent pixel the window methods fuse the predictions of every prompt
with the weights

    W_k = weight_k · M_k          (region k, M_k its feathered mask in [0, 1])
    W_bg = max(0, 1 - Σ_k M_k)    (the background, as in the official MultiDiffusion code)

so where regions overlap (or along a feathered edge) the weights say which prompt counts more, and
where one region covers a pixel alone its weight does not matter.

This module holds the pure mask code (numpy, no torch at import time, so the command line can
check regions before a model loads) and :func:`plan`, which turns checked regions into the
run's :class:`RegionPlan`: every distinct prompt encoded once, latent weight maps, and what
bootstrapping needs. The plan rides on the run's :class:`~anysize.models.base.Conditioning`
(``cond.regions``); :func:`anysize.methods._windows.fuse` reads it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import InvalidArgumentError
from .lazy import lazy_module
from .prompts import check_prompt

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor

    from .models.base import Conditioning

np = lazy_module("numpy")  # noqa: F811
torch = lazy_module("torch")
_control = lazy_module("anysize.models.control")

__all__ = ["Region", "RegionPlan", "check_regions", "format_region", "load_regions_file", "parse_region", "plan", "regions_from_data",
           "supporting_methods"]

#: default share of the steps (from the first) during which a region's windows see a random flat
#: background outside its mask (MultiDiffusion's "bootstrapping"; the official code: 20 of 50 steps)
DEFAULT_BOOTSTRAP = 0.2
#: flat background colours encoded per image for bootstrapping (the official code: 20)
BOOTSTRAP_COLOURS = 8
#: added to an image's seed to seed its bootstrapping stream (separate from the noise and FSTD's offsets)
_BOOTSTRAP_SEED_SALT = 0xB007
#: ... and the stream that picks one of those colours at every bootstrapping step
_PICK_SEED_SALT = 0xB008
#: side in latent px of the flat images encoded for bootstrapping: their latent is near-constant, so a
#: small image gives the colour's latent (its mean) as well as a window-sized one
_BOOTSTRAP_LATENT_SIDE = 8


@dataclass(eq=False)
class Region:
    """A part of the canvas with its own prompt.

    Exactly one of ``box`` (``(x, y, width, height)`` in pixels, inside the canvas) or ``mask`` (an
    H×W array, PIL image or tensor of the canvas size: bool, uint8 0-255 or float 0-1; stored as
    uint8, so 1/255 steps) is given. ``negative`` defaults to the image's own negative prompt.
    ``weight`` (> 0) counts where regions overlap or along a feathered edge. ``feather`` (px) blurs
    the edge into a linear ramp that wide, centred on it. ``bootstrap`` is the share of the steps
    during which this region's windows see a random flat background outside the mask, so its object
    forms inside it (0: never).
    """

    prompt: str
    box: tuple[int, int, int, int] | None = None
    mask: Any = None
    negative: str | None = None
    weight: float = 1.0
    feather: int = 0
    bootstrap: float = DEFAULT_BOOTSTRAP
    #: where the mask came from (a file name), recorded in the metadata next to the mask itself
    mask_source: str | None = field(default=None, repr=False)

    def __post_init__(self):
        check_prompt(self.prompt, "region prompt")
        if not self.prompt.strip():
            raise InvalidArgumentError("a region's prompt is empty; give the text of what the region shows")
        if self.negative is not None:
            check_prompt(self.negative, "region negative prompt")
        if (self.box is None) == (self.mask is None):
            raise InvalidArgumentError(f"region {self.prompt!r}: give exactly one of box (x, y, width, height) or mask")
        if self.box is not None:
            self.box = _check_box(self.box, self.prompt)
        else:
            self.mask = _as_mask(self.mask, self.prompt)
        self.weight = _number("weight", self.weight, self.prompt, low=0.0, open_low=True)
        if isinstance(self.feather, bool) or not isinstance(self.feather, int) or self.feather < 0:
            raise InvalidArgumentError(f"region {self.prompt!r}: feather must be a whole number of pixels >= 0, got {self.feather!r}")
        self.bootstrap = _number("bootstrap", self.bootstrap, self.prompt, low=0.0, high=1.0)

    # ------------------------------------------------------------------ geometry
    def check(self, width: int, height: int) -> None:
        """Refuse a box outside a width×height px canvas, or a mask of another size / covering nothing."""
        if self.box is not None:
            x, y, w, h = self.box
            if x + w > width or y + h > height:
                raise InvalidArgumentError(
                    f"region {self.prompt!r}: box x={x}, y={y}, {w}x{h} reaches past the {width}x{height} canvas; "
                    f"keep x + width <= {width} and y + height <= {height}"
                )
        else:
            mh, mw = self.mask.shape
            if (mh, mw) != (height, width):
                raise InvalidArgumentError(
                    f"region {self.prompt!r}: the mask is {mw}x{mh} px but the canvas is {width}x{height}; "
                    "give a mask of the canvas size"
                )
            if not self.mask.any():
                raise InvalidArgumentError(f"region {self.prompt!r}: the mask covers no pixel")

    def pixel_mask(self, width: int, height: int) -> np.ndarray:
        """The feathered mask on the width×height px canvas, float32 in [0, 1] (``check`` first)."""
        self.check(width, height)
        if self.box is not None:
            x, y, w, h = self.box
            m = np.zeros((height, width), dtype=np.float32)
            m[y : y + h, x : x + w] = 1.0
        else:
            m = self.mask.astype(np.float32) / 255.0
        return feather(m, self.feather)

    # ------------------------------------------------------------------ metadata
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; masks as a base64 grayscale PNG (``mask_png``); :meth:`from_dict` reads it back."""
        d: dict[str, Any] = {"prompt": self.prompt}
        if self.box is not None:
            d["box"] = list(self.box)
        else:
            d["mask_png"] = _png_b64(self.mask)
            if self.mask_source:
                d["mask_source"] = self.mask_source
        if self.negative is not None:
            d["negative"] = self.negative
        d.update(weight=self.weight, feather=self.feather, bootstrap=self.bootstrap)
        return d

    @classmethod
    def from_dict(cls, d: Any, base: str | os.PathLike | None = None, *, mask_files: bool = True) -> "Region":
        """A region from a dict: ``prompt``, ``box`` [x, y, w, h] or ``mask`` (an image file, relative to
        ``base``) or ``mask_png`` (base64 PNG), and optional ``negative``, ``weight``, ``feather``, ``bootstrap``.
        ``mask_files=False`` refuses ``mask`` (a file of this machine): the web UI's regions come from a
        browser, which names no file of the server."""
        if isinstance(d, Region):
            return d
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"a region must be an object with a prompt and a box or mask, got {d!r}")
        known = {"prompt", "box", "mask", "mask_png", "mask_source", "negative", "weight", "feather", "bootstrap"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown region field {unknown[0]!r}; the fields: {', '.join(sorted(known))}")
        if "prompt" not in d:
            raise InvalidArgumentError(f"a region needs a prompt, got {d!r}")
        if sum(k in d for k in ("box", "mask", "mask_png")) != 1:
            raise InvalidArgumentError(f"region {d['prompt']!r}: give exactly one of box, mask (a file) or mask_png")
        mask, source = None, d.get("mask_source")
        if "mask" in d:
            if not mask_files:
                raise InvalidArgumentError(
                    f"region {d['prompt']!r}: a mask file is read only from a regions file on this machine; give "
                    "the mask inline as mask_png (a base64 PNG of the canvas size)")
            if not isinstance(d["mask"], str):
                raise InvalidArgumentError(f"region {d['prompt']!r}: mask must be the path of an image file, got {d['mask']!r}")
            path = Path(d["mask"]) if base is None else Path(base) / d["mask"]
            mask, source = _read_mask_file(path, d["prompt"]), d["mask"]
        elif "mask_png" in d:
            mask = _read_png_b64(d["mask_png"], d["prompt"])
        kw = {k: d[k] for k in ("negative", "weight", "feather", "bootstrap") if k in d}
        box = d.get("box")
        if box is not None and not isinstance(box, (list, tuple)):
            raise InvalidArgumentError(f"region {d['prompt']!r}: box must be [x, y, width, height], got {box!r}")
        return cls(d["prompt"], box=None if box is None else tuple(box), mask=mask, mask_source=source, **kw)


def _number(name: str, value, prompt: str, *, low: float, high: float | None = None, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"> {low:g}" if open_low else f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise InvalidArgumentError(f"region {prompt!r}: {name} must be a number {rng}, got {value!r}")
    return float(value)


def _check_box(box, prompt: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(box)
    except TypeError:
        values = ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise InvalidArgumentError(f"region {prompt!r}: box must be four whole numbers x, y, width, height in pixels, got {box!r}")
    x, y, w, h = (int(v) for v in values)
    if x < 0 or y < 0:
        raise InvalidArgumentError(f"region {prompt!r}: box x={x}, y={y} starts outside the canvas; x and y must be >= 0")
    if w <= 0 or h <= 0:
        raise InvalidArgumentError(f"region {prompt!r}: box {w}x{h} is empty; width and height must be positive")
    return x, y, w, h


def _as_mask(mask, prompt: str) -> np.ndarray:
    """A 2-D uint8 array (0-255) from an array, tensor or PIL image (bool, uint8 or float in [0, 1])."""
    if hasattr(mask, "convert") and hasattr(mask, "size"):  # PIL
        mask = np.asarray(mask.convert("L"))
    elif type(mask).__module__.startswith("torch"):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise InvalidArgumentError(f"region {prompt!r}: mask must be an array, tensor or image, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InvalidArgumentError(f"region {prompt!r}: mask must be 2-D (height x width), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8) * 255
    if mask.dtype == np.uint8:
        return mask.copy()
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise InvalidArgumentError(f"region {prompt!r}: a float mask must hold values in [0, 1]")
        return np.round(mask * 255).astype(np.uint8)
    raise InvalidArgumentError(f"region {prompt!r}: mask must be bool, uint8 (0-255) or float (0-1), got {mask.dtype}")


def _png_b64(mask: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _read_png_b64(text, prompt: str) -> np.ndarray:
    from PIL import Image

    try:
        data = base64.b64decode(text, validate=True)
        return np.asarray(Image.open(io.BytesIO(data)).convert("L")).copy()
    except (TypeError, ValueError, OSError) as e:
        raise InvalidArgumentError(f"region {prompt!r}: mask_png is not a base64 PNG image: {e}") from None


def _read_mask_file(path: Path, prompt: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")).copy()
    except OSError as e:
        raise InvalidArgumentError(f"region {prompt!r}: cannot read the mask image {path}: {e}") from None


def feather(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` with every edge turned into a linear ramp ``width`` px wide centred on it: a box filter
    of that width along each axis, edges replicated (a region at the canvas border stays 1 there)."""
    if width <= 1:
        return mask
    out = mask
    for axis in (0, 1):
        lo, hi = width // 2, width - 1 - width // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (lo + 1, hi)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        n = out.shape[axis]
        a = np.take(c, range(width, width + n), axis=axis)
        b = np.take(c, range(0, n), axis=axis)
        out = ((a - b) / width).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ front ends


def parse_region(text: str) -> Region:
    """``"X,Y,W,H:prompt"`` (the command line's ``--region``) -> a box region."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"a region must be text X,Y,W,H:prompt, got {text!r}")
    head, sep, prompt = text.partition(":")
    parts = [p.strip() for p in head.split(",")]
    if not sep or len(parts) != 4:
        raise InvalidArgumentError(f"region {text!r} is not X,Y,W,H:prompt (pixels), e.g. '0,0,128,128:a red circle'")
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidArgumentError(f"region {text!r}: X,Y,W,H must be whole numbers of pixels") from None
    return Region(prompt.strip(), box=box)


def format_region(region: Region) -> str | None:
    """The ``"X,Y,W,H:prompt"`` that :func:`parse_region` reads back as ``region`` (a :class:`Region` or
    its dict), or None when it has more than a box and a one-line prompt (a mask, a negative, a weight,
    a feather, a bootstrap share other than the default): those only JSON holds."""
    r = Region.from_dict(region) if isinstance(region, dict) else region
    plain = (r.box is not None and r.negative is None and r.weight == 1.0 and r.feather == 0
             and r.bootstrap == DEFAULT_BOOTSTRAP and "\n" not in r.prompt and r.prompt == r.prompt.strip())
    return f"{','.join(map(str, r.box))}:{r.prompt}" if plain else None


def load_regions_file(path: str | os.PathLike) -> list[Region]:
    """A JSON file holding a list of region objects (see :meth:`Region.from_dict`); mask files are
    read relative to the JSON file's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the regions file {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"regions file {path} is not JSON: {e}") from None
    return regions_from_data(data, f"regions file {path}", base=path.parent)


def regions_from_data(data, where: str, *, base: str | os.PathLike | None = None,
                      mask_files: bool = True) -> list[Region]:
    """The regions of parsed JSON: a list of region objects (or ``{"regions": [...]}``), each read by
    :meth:`Region.from_dict`; ``where`` names the source in the message for anything else."""
    if isinstance(data, dict) and "regions" in data:
        data = data["regions"]
    if not isinstance(data, list) or not data:
        raise InvalidArgumentError(f"{where} must hold a non-empty list of region objects")
    return [Region.from_dict(d, base=base, mask_files=mask_files) for d in data]


def as_regions(regions) -> list[Region]:
    """Region objects or dicts (:meth:`Region.from_dict`) as a non-empty list of Regions."""
    if isinstance(regions, (Region, dict)):
        regions = [regions]
    try:
        out = [Region.from_dict(r) for r in regions]
    except TypeError:
        raise InvalidArgumentError(f"regions must be a list of Region objects, got {type(regions).__name__}") from None
    if not out:
        raise InvalidArgumentError("regions is an empty list; give at least one Region, or None for no regions")
    return out


def check_regions(regions, width: int, height: int) -> list[Region]:
    """:func:`as_regions`, each checked against the width×height px canvas."""
    out = as_regions(regions)
    for r in out:
        r.check(width, height)
    return out


def supporting_methods() -> list[str]:
    from . import methods

    return [n for n in methods.names() if getattr(methods.get(n), "takes_regions", False)]


def check_method(method) -> None:
    """Refuse regions for a method without region support, naming those with it."""
    if not getattr(method, "takes_regions", False):
        raise InvalidArgumentError(
            f"method {method.name!r} takes no regional prompts; the methods that do: {', '.join(supporting_methods())}"
        )


# ------------------------------------------------------------------------------------------ the run's plan


@dataclass
class RegionPlan:
    """What the window methods need for a run's regions (built once by :func:`plan`).

    Slot 0 is the background (each image's own prompt), slot k the k-th region. ``table`` holds
    every distinct (prompt, negative) pair once: rows 0..B-1 are the images' own conditioning, then
    the regions' other pairs; ``rows[i][s]`` is the row of slot s for image i. ``weights`` (S, h, w)
    are the fusion weights W_s and ``masks`` (S, h, w) the feathered masks M_s on the latent canvas
    (float32, on the host: which windows a slot touches is decided there, with no wait for the
    device). ``bootstrap[s]`` is slot s's bootstrapping share; ``colours`` (B, K, C) the latent of K
    flat colours per image and ``noise`` (B, C, h, w) the noise they are noised with.
    """

    table: Conditioning
    rows: list[list[int]]
    weights: Tensor
    masks: Tensor
    bootstrap: list[float]
    colours: Tensor | None
    noise: Tensor | None
    seeds: list[int]
    _touch: Any = None
    _full: Any = None
    _mask_full: Any = None
    _device: dict = field(default_factory=dict)

    def __post_init__(self):
        w = self.weights.numpy()
        self._touch = _integral(w > 0)
        self._full = _integral(w == 1)
        self._mask_full = _integral(self.masks.numpy() == 1)

    @property
    def slots(self) -> int:
        return self.weights.shape[0]

    def touches(self, slot: int, top: int, left: int, height: int, width: int) -> bool:
        """Whether slot ``slot`` has weight somewhere in the window (columns past the right border wrap)."""
        return _box_sum(self._touch[slot], top, left, height, width) > 0

    def full(self, slot: int, top: int, left: int, height: int, width: int) -> bool:
        """Whether slot ``slot``'s weight is exactly 1 all over the window (its weight map can be skipped)."""
        return _box_sum(self._full[slot], top, left, height, width) == height * width

    def mask_full(self, slot: int, top: int, left: int, height: int, width: int) -> bool:
        """Whether slot ``slot``'s mask is exactly 1 all over the window (nothing to bootstrap there)."""
        return _box_sum(self._mask_full[slot], top, left, height, width) == height * width

    def bootstrapping(self, progress: float) -> list[int]:
        """The slots that bootstrap at a step this far (0-1) into the loop."""
        return [s for s, share in enumerate(self.bootstrap) if progress < share]

    def on(self, name: str, device) -> Tensor:
        """``weights``, ``masks``, ``colours`` or ``noise`` on ``device``, uploaded once."""
        key = (name, str(device))
        if key not in self._device:
            from .devices import upload

            self._device[key] = upload(getattr(self, name), device)
        return self._device[key]

    def colour_streams(self) -> list:
        """One generator per image for a loop's colour draws, derived from its seed (a stream of its own)."""
        return [torch.Generator("cpu").manual_seed((s + _PICK_SEED_SALT) % 2**63) for s in self.seeds]


def _integral(a: np.ndarray) -> np.ndarray:
    """(S, h+1, w+1) summed-area tables of a (S, h, w) boolean stack."""
    s = np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2] + 1), dtype=np.int64)
    s[:, 1:, 1:] = a.cumsum(1).cumsum(2)
    return s


def _box_sum(s: np.ndarray, top: int, left: int, height: int, width: int) -> int:
    h, w = s.shape[0] - 1, s.shape[1] - 1
    total, start, cols = 0, left, width
    while cols > 0:  # a circular window wraps past the right border
        c0 = start % w
        take = min(cols, w - c0)
        b, r = top + height, c0 + take
        total += int(s[b, r] - s[top, r] - s[b, c0] + s[top, c0])
        start, cols = start + take, cols - take
    return total


def latent_maps(regions: Sequence[Region], width: int, height: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, masks), each (1 + R, height/factor, width/factor) float32: the background first,
    the masks area-averaged onto the latent grid."""
    h, w = height // factor, width // factor
    masks = []
    for r in regions:
        m = r.pixel_mask(width, height).astype(np.float64)
        masks.append(m.reshape(h, factor, w, factor).mean(axis=(1, 3)))
    fg = np.stack(masks)
    bg = np.clip(1.0 - fg.sum(0), 0.0, 1.0)
    weights = np.concatenate([bg[None], fg * np.array([r.weight for r in regions])[:, None, None]])
    return weights.astype(np.float32), np.concatenate([bg[None], fg]).astype(np.float32)


def plan(adapter, regions: Sequence[Region], prompts: list[str], negative: list[str] | None, cond: Conditioning,
         width: int, height: int, seeds: Sequence[int]) -> RegionPlan:
    """The run's :class:`RegionPlan`. ``cond`` is the images' own conditioning (``prompts`` /
    ``negative``, encoded as without regions); every other distinct (prompt, negative) pair of the
    regions is encoded once, in one call per kind of negative (given or not)."""
    b = len(prompts)
    pairs = {(p, None if negative is None else negative[i]): i for i, p in reversed(list(enumerate(prompts)))}
    wanted = []
    for i in range(b):
        for r in regions:
            pair = (r.prompt, r.negative if r.negative is not None else (None if negative is None else negative[i]))
            if pair not in pairs and pair not in wanted:
                wanted.append(pair)
    table = cond
    for with_negative in (False, True):
        group = [p for p in wanted if (p[1] is not None) == with_negative]
        if group:
            extra = adapter.encode_prompt([p for p, _ in group], [n for _, n in group] if with_negative else None,
                                          guidance_scale=cond.guidance_scale)
            # the run's ControlNets ride on every row of the table, the regions' prompts too
            extra = _control.attach(extra, _control.of(cond.positive))
            table = _cat(table, extra)
            start = table.batch - len(group)
            for k, p in enumerate(group):
                pairs[p] = start + k
    rows = []
    for i in range(b):
        own = [i]
        for r in regions:
            own.append(pairs[(r.prompt, r.negative if r.negative is not None else (None if negative is None else negative[i]))])
        rows.append(own)
    weights, masks = latent_maps(regions, width, height, adapter.vae_factor)
    bootstrap = [0.0] + [r.bootstrap for r in regions]
    colours = noise = None
    if any(bootstrap):
        colours, noise = _bootstrap_latents(adapter, seeds, masks.shape[1:])
    return RegionPlan(table, rows, torch.from_numpy(weights), torch.from_numpy(masks), bootstrap, colours, noise,
                      [int(s) for s in seeds])


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    """``a``'s rows, then ``b``'s (b's negative is None where a's is: both encoded alike)."""
    from .models.base import Conditioning

    neg = None if a.negative is None else a.negative.cat(b.negative)
    return Conditioning(a.positive.cat(b.positive), neg, a.guidance_scale, a.network_guidance)


def _bootstrap_latents(adapter, seeds: Sequence[int], latent_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per image: the latents of ``BOOTSTRAP_COLOURS`` random flat colours (B, K, C) and a noise
    canvas (B, C, h, w), from a stream derived from the image's seed (the same alone or in a batch)."""
    side = _BOOTSTRAP_LATENT_SIDE * max(1, adapter.size_multiple // adapter.vae_factor) * adapter.vae_factor
    colours, noise = [], []
    for s in seeds:
        g = torch.Generator("cpu").manual_seed((int(s) + _BOOTSTRAP_SEED_SALT) % 2**63)
        rgb = torch.rand(BOOTSTRAP_COLOURS, 3, 1, 1, generator=g)
        noise.append(torch.randn(adapter.latent_channels, *latent_hw, generator=g))
        flat = (rgb * 2 - 1).expand(-1, -1, side, side).contiguous()
        z = adapter.encode(flat, sample=False, tiled=False)
        colours.append(z.float().mean(dim=(-2, -1)).cpu())
    return torch.stack(colours), torch.stack(noise)

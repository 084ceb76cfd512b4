"""The toy world: one coloured shape on a plain or two-tone background, with its caption.

Every image shows exactly **one** object (a circle, square, triangle or star in one of six colours),
35–60 % of the image side, roughly centred, on a background of one or two other colours, e.g.
"a red triangle on a blue background" or "a yellow star on a black and white background". A model
trained on these at its native size knows one object per canvas; generated at a larger size, a
method either keeps one object (good composition) or repeats it (the seeds' failure mode), which
:mod:`anysize.toy.composition` counts by image analysis.

Samples are a pure function of ``(seed, index)``: deterministic, independent of order, and fast
(about 1 ms at 128 px), so training generates them on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "NATIVE_SIZE", "COLOURS", "OBJECT_COLOURS", "BACKGROUND_COLOURS", "SHAPES", "ToySpec",
    "sample_spec", "render", "write_aspect_dataset", "shape_mask", "caption", "parse_caption", "make_sample", "ToyDataset",
]

#: pixel side of the toy model's training images
NATIVE_SIZE = 128

#: the palette (sRGB); objects use the first six, backgrounds any colour but the object's
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 175),
    "orange": (245, 130, 20),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
OBJECT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUND_COLOURS: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: object side as a fraction of the image side, centre jitter as a fraction of the side,
#: share of two-tone backgrounds, supersampling factor of the rasteriser (anti-aliased edges)
SIZE_RANGE = (0.35, 0.60)
CENTRE_JITTER = 0.08
TWO_TONE_SHARE = 0.3
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class ToySpec:
    """Everything that defines one image; ``render(spec, size)`` draws it at any size."""

    colour: str
    shape: str
    background: tuple[str, ...]  # one colour, or two for a two-tone background
    split: tuple[str, float] | None  # two-tone: ("vertical" | "horizontal", position in [0, 1])
    centre: tuple[float, float]  # (x, y) as fractions of the side
    side: float  # object side as a fraction of the image side

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)

    def box(self, size: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of the square the shape is drawn in."""
        half = self.side * size / 2
        cx, cy = self.centre[0] * size, self.centre[1] * size
        return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def caption(colour: str, shape: str, background: tuple[str, ...] | str) -> str:
    bg = (background,) if isinstance(background, str) else tuple(background)
    return f"{_article(colour)} {colour} {shape} on {_article(bg[0])} {' and '.join(bg)} background"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def parse_caption(text: str) -> tuple[str | None, str | None]:
    """(object colour, shape) named in a prompt: the first palette colour and shape words before
    " on " (the background comes after it); None for what is not named."""
    words = text.lower().replace(",", " ").split()
    if "on" in words:
        words = words[: words.index("on")]
    colour = next((w for w in words if w in OBJECT_COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return colour, shape


def sample_spec(rng: np.random.Generator, size_range: tuple[float, float] = SIZE_RANGE,
                centre_jitter: float = CENTRE_JITTER) -> ToySpec:
    """Draw one image's spec: uniform colour and shape, side uniform in ``size_range``, centre
    jittered by up to ``centre_jitter`` (fractions of the image side)."""
    lo_side, hi_side = size_range
    if not 0 < lo_side <= hi_side <= 1 or not 0 <= centre_jitter < 0.5:
        raise InvalidArgumentError(
            f"object size range {size_range} must lie in (0, 1] (low <= high) and centre jitter "
            f"{centre_jitter} in [0, 0.5)")
    colour = OBJECT_COLOURS[rng.integers(len(OBJECT_COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    bg_choices = [c for c in BACKGROUND_COLOURS if c != colour]
    if rng.random() < TWO_TONE_SHARE:
        i, j = rng.choice(len(bg_choices), size=2, replace=False)
        background = (bg_choices[i], bg_choices[j])
        split = (("vertical", "horizontal")[rng.integers(2)], float(rng.uniform(0.35, 0.65)))
    else:
        background = (bg_choices[rng.integers(len(bg_choices))],)
        split = None
    side = float(rng.uniform(lo_side, hi_side))
    # jitter the centre, but keep the whole object inside the image
    lo, hi = side / 2, 1 - side / 2
    centre = tuple(float(np.clip(0.5 + rng.uniform(-centre_jitter, centre_jitter), lo, hi)) for _ in range(2))
    return ToySpec(colour, shape, background, split, centre, side)


def _polygon(shape: str) -> np.ndarray | None:
    """Vertices (x, y) in [-1, 1]² of the polygonal shapes (y down), apex up; None for a circle."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        # stretch to fill [-1, 1]² like the other shapes (a star is wider than tall)
        pts -= (pts.min(0) + pts.max(0)) / 2
        return pts / (pts.max(0) - pts.min(0)) * 2
    if shape == "circle":
        return None
    raise InvalidArgumentError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the points (x, y) in the unit shape (coordinates in [-1, 1]²)."""
    poly = _polygon(shape)
    if poly is None:
        return x * x + y * y <= 1.0
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):  # even-odd rule
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` stretched to fill a height × width box (metric templates)."""
    s = _SUPERSAMPLE
    ys = (np.arange(height * s) + 0.5) / (height * s) * 2 - 1
    xs = (np.arange(width * s) + 0.5) / (width * s) * 2 - 1
    m = _inside(shape, xs[None, :], ys[:, None]).astype(np.float32)
    return m.reshape(height, s, width, s).mean(axis=(1, 3))


def render(spec: ToySpec, size: int | tuple[int, int] = NATIVE_SIZE) -> np.ndarray:
    """Draw ``spec`` as an (H, W, 3) uint8 RGB array, edges anti-aliased.

    ``size`` is a side (square) or ``(height, width)``. On a non-square canvas the centre and a
    two-tone split are fractions of their own axis, and the object's side is a fraction of the
    *short* side, so an object keeps its shape and its size relative to the short side.
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(h, w) < 8:
        raise InvalidArgumentError(f"toy images need sides of at least 8 px, got {w}x{h}")
    s = _SUPERSAMPLE
    ys = (np.arange(h * s) + 0.5) / (h * s)  # pixel centres as fractions of their axis
    xs = (np.arange(w * s) + 0.5) / (w * s)
    palette = np.array([COLOURS[c] for c in spec.background], dtype=np.float32)
    if spec.split is None:
        img = np.broadcast_to(palette[0], (h * s, w * s, 3)).copy()
    else:
        axis, pos = spec.split
        first = (xs < pos)[None, :] if axis == "vertical" else (ys < pos)[:, None]
        first = np.broadcast_to(first, (h * s, w * s))
        img = np.where(first[..., None], palette[0], palette[1]).astype(np.float32)
    if h == w:
        half_x = half_y = spec.side / 2
    else:  # the side is a fraction of the short side; convert to fractions of each axis
        half_x, half_y = spec.side * min(h, w) / w / 2, spec.side * min(h, w) / h / 2
    x = (xs[None, :] - spec.centre[0]) / half_x
    y = (ys[:, None] - spec.centre[1]) / half_y
    mask = _inside(spec.shape, x, y)
    img[mask] = np.array(COLOURS[spec.colour], dtype=np.float32)
    img = img.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_aspect_dataset(folder, n: int, sizes: Sequence[tuple[int, int]], seed: int = 0,
                         size_range: tuple[float, float] = SIZE_RANGE, centre_jitter: float = CENTRE_JITTER) -> int:
    """Write ``n`` toy images of the (height, width) ``sizes`` (cycled) as PNG + sidecar caption .txt.

    Image i is ``sample_spec`` of (seed, i) drawn at ``sizes[i % len(sizes)]``: one roughly
    centred object on every canvas, whatever its shape — the multi-aspect data ARAD fine-tunes on.
    Returns the number written.
    """
    from pathlib import Path

    from PIL import Image

    if n <= 0 or not sizes:
        raise InvalidArgumentError("write_aspect_dataset needs n > 0 and at least one size")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spec = sample_spec(np.random.default_rng([int(seed), i]), size_range, centre_jitter)
        Image.fromarray(render(spec, tuple(sizes[i % len(sizes)]))).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.txt").write_text(spec.caption + "\n")
    return n


def make_sample(seed: int, index: int, size: int = NATIVE_SIZE, size_range: tuple[float, float] = SIZE_RANGE,
                centre_jitter: float = CENTRE_JITTER) -> tuple[np.ndarray, ToySpec]:
    """Image ``index`` of the dataset with ``seed``: (uint8 HxWx3 image, its spec)."""
    spec = sample_spec(np.random.default_rng([int(seed), int(index)]), size_range, centre_jitter)
    return render(spec, size), spec


class ToyDataset:
    """An endless-looking indexable dataset: item i is ``make_sample(seed, i)`` as training tensors.

    ``dataset[i]`` gives ``{"pixel_values": float32 (3, size, size) in [-1, 1], "caption": str}``;
    works as a ``torch.utils.data.Dataset`` (``__len__`` is ``length``).
    """

    def __init__(self, seed: int = 0, length: int = 1_000_000, size: int = NATIVE_SIZE):
        self.seed, self.length, self.size = int(seed), int(length), int(size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        img, spec = make_sample(self.seed, index, self.size)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {"pixel_values": x, "caption": spec.caption}

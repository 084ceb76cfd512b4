"""Composition metrics for the toy world: how many objects of the prompted colour an image shows, and
whether the (largest) one has the prompted colour and shape. Tile-seam visibility too.

The toy model was trained on images of exactly one object (:mod:`anysize.toy.data`). At larger sizes
a method either keeps one object or repeats it. :func:`analyse` counts objects with plain image
analysis (no learned features):

1. **Classify pixels.** The image gets a 3×3 box blur first. Without it, noise of σ grey levels
   per channel flips pixels between the closest palette pair (yellow/orange, 83 apart) and leaves
   speckle. The blur divides σ by 3 and only smears edges by one pixel. Then each pixel takes its
   nearest palette colour (Euclidean RGB). A pixel farther than ``max_colour_distance``
   (default 80, just under that closest pair) from every palette colour stays unclassified.
2. **Clean up.** A 3×3 morphological opening per colour removes specks and the 1–2 px mixed-colour
   halos that form where two colours meet (halfway between red and blue is nearest to purple).
   Because every pixel has one class, this is done on the class map in one go: keep a pixel when
   some 3×3 window containing it is entirely its colour.
3. **Connected components.** Same-colour regions are labelled with 8-connectivity, using union-find
   over horizontal runs. The union-find is vectorised: roots hook to the smaller root, then paths
   are compressed fully. A region counts as an **object** when (a) its colour is an object colour,
   (b) it is not background (see below), and (c) its area is at least
   ``min_area_frac × (SIZE_RANGE[0] · scale)² × fill(star)``. That product is the area of the
   smallest training object: the smallest side (35 % of the image) times the lowest template fill
   (a star, 0.38). ``scale = min(native_size, image short side)``: objects keep their trained
   pixel size when the canvas grows, but a smaller canvas shrinks them. The default fraction of
   0.25 gives about 190 px at 128 px native. A quarter of the smallest real object still counts;
   noise blobs and halo fragments do not.
4. **Background.** Colours covering at least ``background_border_frac`` (20 %) of the border pixels
   are reported as ``background``. A region is background, and so never an object, when it touches
   that much of the image's perimeter or spans the image's whole width or height. A toy object
   never touches the border (and an object cut off by the border covers only its chord), while even
   the smaller half of a two-tone background covers over 40 % of the perimeter.
5. **Measure.** Each object regrows up to ``_REGROW_STEPS`` (4) 3×3 steps into the unopened
   pixels of its colour. This restores star points and triangle apexes that the opening cut,
   while anything thin attached to the object adds at most 4 px. Areas, boxes and sizes are taken
   from the regrown mask. ``relative_sizes`` is the longer box side divided by ``native_size``
   (0.35–0.60 is the trained scale). Circles and squares measure exactly. Pointed tips still read
   about 2 px short each, because a blurred tip pixel is mostly background, so a star's side
   comes out up to about 5 % of the native size short.
6. **Shape and colour.** The analysed object is the largest of the prompted colour, or else the
   largest of any other object colour. Its mask, cropped to its box, is compared with every
   :func:`~anysize.toy.data.shape_mask` template stretched to that box, as the dataset draws them.
   The score is a soft IoU against the coverage template, and the argmax is the predicted shape.
   So ``colour_match`` means some object of the prompted colour exists. ``fidelity`` means exactly
   one does, and it has the prompted shape. Objects of other colours are reported in
   ``n_other_objects`` but do not affect fidelity.

:func:`seam_score` measures tile seams: the mean absolute difference between adjacent pixel
columns (rows) on the given tile-boundary positions, divided by the same mean everywhere else. A
score of 1 means no seam. :func:`summarise` turns many analyses into the benchmark's rates,
JSON-ready.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidArgumentError
from .data import COLOURS, NATIVE_SIZE, OBJECT_COLOURS, SHAPES, SIZE_RANGE, parse_caption, shape_mask

__all__ = [
    "DEFAULT_MAX_COLOUR_DISTANCE", "DEFAULT_MIN_AREA_FRAC", "DEFAULT_BACKGROUND_BORDER_FRAC",
    "PALETTE_NAMES", "ImageAnalysis", "Regions", "SeamScore", "analyse", "classify_pixels", "label_regions",
    "min_object_area", "objects_in_boxes", "seam_score", "summarise",
]

#: a pixel farther than this (RGB Euclidean) from every palette colour is "unclassified"
DEFAULT_MAX_COLOUR_DISTANCE = 80.0
#: an object must have at least this fraction of the smallest training object's area
DEFAULT_MIN_AREA_FRAC = 0.25
#: share of the image border that makes a colour (or a region) background
DEFAULT_BACKGROUND_BORDER_FRAC = 0.2

#: palette order of the class indices returned by :func:`classify_pixels` (-1: unclassified)
PALETTE_NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in PALETTE_NAMES], dtype=torch.float32)
_OBJECT_CLASSES = frozenset(PALETTE_NAMES.index(c) for c in OBJECT_COLOURS)
#: an object found after the opening regrows this many 3×3 steps into its colour's unopened mask,
#: restoring the tips (star points, triangle apex) that the opening cut off, while anything thin
#: attached to it (a line, a halo) adds at most this many pixels
_REGROW_STEPS = 4
#: shapes are scored at most at this side (larger masks are area-downsampled first: same IoU, cheaper)
_SHAPE_SCORE_SIDE = 64
#: added to both gradient means of the seam score so that flat images give 1, not 0/0 or a huge
#: ratio from sub-grey-level differences
_SEAM_EPS = 0.5


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class SeamScore:
    """Gradient energy on tile boundaries / elsewhere, per axis and pooled (None: no boundaries given).

    ``x`` is for vertical lines at the x positions, ``y`` for horizontal lines at the y positions."""

    x: float | None
    y: float | None
    overall: float | None


@dataclass(frozen=True)
class ImageAnalysis:
    """What :func:`analyse` found in one image; :meth:`to_dict` is JSON-ready.

    Objects (areas, boxes ``[x0, y0, x1, y1]`` inclusive, sizes) are of the prompted colour and come
    largest first. ``relative_sizes`` is the longer bounding-box side divided by the native size,
    so 0.35–0.60 is the trained scale. ``image_relative_sizes`` divides by the image's short side.
    ``colour``, ``shape`` and ``shape_scores`` describe the analysed object: the largest of the
    prompted colour, or else the largest of any colour (None / empty when there is no object).
    ``shape_match`` is None when the prompt names no shape. ``fidelity`` means exactly one object
    of the prompted colour, and it has the prompted shape.
    """

    width: int
    height: int
    prompt_colour: str
    prompt_shape: str | None
    n_objects: int
    object_areas: list[int]
    object_boxes: list[list[int]]
    relative_sizes: list[float]
    image_relative_sizes: list[float]
    n_other_objects: int  # objects of other object colours (not counted in n_objects)
    colour: str | None
    shape: str | None
    shape_scores: dict[str, float]
    colour_match: bool
    shape_match: bool | None
    fidelity: bool
    background: list[str]  # palette colours covering >= background_border_frac of the border, most first
    unclassified_frac: float  # share of pixels far from every palette colour (off-palette output)
    min_area: float  # the object area threshold used, in pixels
    seam: SeamScore | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageAnalysis:
        """The analysis :meth:`to_dict` wrote (other keys, e.g. a record's prompt and seed, are ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if values.get("seam") is not None:
            values["seam"] = SeamScore(**values["seam"])
        return cls(**values)


# ------------------------------------------------------------------------------------------ analysis


def analyse(
    image: Image.Image | np.ndarray,
    prompt: str,
    *,
    native_size: int = NATIVE_SIZE,
    min_area_frac: float = DEFAULT_MIN_AREA_FRAC,
    min_area: float | None = None,
    max_colour_distance: float = DEFAULT_MAX_COLOUR_DISTANCE,
    background_border_frac: float = DEFAULT_BACKGROUND_BORDER_FRAC,
    boundaries_x: Iterable[int] | None = None,
    boundaries_y: Iterable[int] | None = None,
) -> ImageAnalysis:
    """Count the objects of the prompt's colour in ``image`` and check colour and shape (module doc).

    ``image`` is a PIL image or an H×W×3 uint8 array of any size. ``prompt`` must name an object
    colour (``parse_caption``). ``min_area`` in pixels overrides the threshold derived from
    ``native_size`` and ``min_area_frac``. When tile boundaries are given, the seam score is
    attached as ``seam``.
    """
    rgb = _as_rgb(image)
    prompt_colour, prompt_shape = _parse_prompt(prompt)
    if not (isinstance(native_size, (int, np.integer)) and native_size > 0):
        raise InvalidArgumentError(f"native_size must be a positive integer, got {native_size!r}")
    if not background_border_frac > 0 or background_border_frac > 1:
        raise InvalidArgumentError(f"background_border_frac must be in (0, 1], got {background_border_frac}")
    height, width = rgb.shape[:2]
    if min_area is None:
        min_area = min_object_area(native_size, min_area_frac, image_short_side=min(height, width))
    elif not min_area >= 0:
        raise InvalidArgumentError(f"min_area must be >= 0 pixels, got {min_area}")

    classes = classify_pixels(rgb, max_colour_distance)
    regions = label_regions(_open_class_map(classes))
    perimeter = 2 * (width + height)
    spans = (regions.boxes[:, 0] == 0) & (regions.boxes[:, 2] == width - 1)
    spans |= (regions.boxes[:, 1] == 0) & (regions.boxes[:, 3] == height - 1)
    is_background = (regions.border_contact >= background_border_frac * perimeter) | spans
    is_object = (
        np.isin(regions.classes, list(_OBJECT_CLASSES)) & ~is_background & (regions.areas >= min_area)
    )
    target = PALETTE_NAMES.index(prompt_colour)
    prompted = np.flatnonzero(is_object & (regions.classes == target))
    others = np.flatnonzero(is_object & (regions.classes != target))
    # measure objects on their regrown masks (areas, boxes, shape as drawn, tips included), largest first
    regrown = {int(k): _regrow(regions, int(k), classes) for k in prompted}
    prompted = sorted(regrown, key=lambda k: -int(regrown[k][0].sum()))
    areas = [int(regrown[k][0].sum()) for k in prompted]
    boxes = [regrown[k][1] for k in prompted]
    sides = [max(x1 - x0, y1 - y0) + 1 for x0, y0, x1, y1 in boxes]

    # the object judged for colour and shape: the prompted colour's largest, else anything's largest
    colour = shape = None
    scores: dict[str, float] = {}
    if prompted:
        main_class, main_mask = target, regrown[prompted[0]][0]
    elif len(others):
        largest = int(others[np.argmax(regions.areas[others])])
        main_class, main_mask = int(regions.classes[largest]), _regrow(regions, largest, classes)[0]
    if prompted or len(others):
        colour = PALETTE_NAMES[main_class]
        scores = _shape_scores(main_mask)
        shape = max(scores, key=scores.get)
    colour_match = colour == prompt_colour
    shape_match = None if prompt_shape is None else shape == prompt_shape

    seam = None
    if boundaries_x is not None or boundaries_y is not None:
        seam = seam_score(rgb, () if boundaries_x is None else boundaries_x,
                          () if boundaries_y is None else boundaries_y)
    return ImageAnalysis(
        width=width,
        height=height,
        prompt_colour=prompt_colour,
        prompt_shape=prompt_shape,
        n_objects=len(prompted),
        object_areas=areas,
        object_boxes=[list(box) for box in boxes],
        relative_sizes=[float(s) / native_size for s in sides],
        image_relative_sizes=[float(s) / min(height, width) for s in sides],
        n_other_objects=len(others),
        colour=colour,
        shape=shape,
        shape_scores=scores,
        colour_match=colour_match,
        shape_match=shape_match,
        fidelity=len(prompted) == 1 and colour_match and shape_match is not False,
        background=_border_colours(classes, background_border_frac),
        unclassified_frac=float((classes < 0).mean()),
        min_area=float(min_area),
        seam=seam,
    )


def objects_in_boxes(
    image: Image.Image | np.ndarray, targets: Sequence[tuple[str, Sequence[int]]], **analyse_kw: Any,
) -> list[bool]:
    """For each ``(prompt, (x, y, width, height))``: whether :func:`analyse` finds an object of the
    prompt's colour whose bounding-box centre lies in that box (regional prompts: "a red circle" on
    the left, "a blue square" on the right). Objects elsewhere do not count against it."""
    out = []
    for prompt, (x, y, w, h) in targets:
        found = analyse(image, prompt, **analyse_kw).object_boxes
        out.append(any(x <= (b[0] + b[2]) / 2 < x + w and y <= (b[1] + b[3]) / 2 < y + h for b in found))
    return out


def min_object_area(
    native_size: int = NATIVE_SIZE,
    min_area_frac: float = DEFAULT_MIN_AREA_FRAC,
    *,
    image_short_side: int | None = None,
) -> float:
    """Object area threshold in pixels: ``min_area_frac`` × the smallest training object's area.

    The smallest training object is the lowest-fill shape (a star) at the smallest side
    (``SIZE_RANGE[0]``), measured at ``min(native_size, image_short_side)``.
    """
    if not min_area_frac >= 0:
        raise InvalidArgumentError(f"min_area_frac must be >= 0, got {min_area_frac}")
    scale = native_size if image_short_side is None else min(native_size, image_short_side)
    smallest_fill = min(_template_fill(s) for s in SHAPES)
    return float(min_area_frac * (SIZE_RANGE[0] * scale) ** 2 * smallest_fill)


def classify_pixels(
    image: Image.Image | np.ndarray, max_colour_distance: float = DEFAULT_MAX_COLOUR_DISTANCE
) -> np.ndarray:
    """H×W int8 map of nearest palette colours (indices into :data:`PALETTE_NAMES`; -1: farther than
    ``max_colour_distance`` from all), decided after a 3×3 box blur that denoises."""
    if not max_colour_distance > 0:
        raise InvalidArgumentError(f"max_colour_distance must be > 0, got {max_colour_distance}")
    rgb = _as_rgb(image)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
    best_dist = torch.full(x.shape[1:], float("inf"))
    best = torch.zeros(x.shape[1:], dtype=torch.int8)
    for index, colour in enumerate(_PALETTE):  # one colour at a time: memory stays at a few H×W maps
        dist = (x - colour[:, None, None]).square_().sum(0)
        closer = dist < best_dist
        best_dist = torch.where(closer, dist, best_dist)
        best[closer] = index
    best[best_dist > max_colour_distance**2] = -1
    return best.numpy()


def _open_class_map(classes: np.ndarray) -> np.ndarray:
    """3×3 opening of every colour of a class map at once: a pixel keeps its class when some 3×3
    window containing it is all that class, else it becomes -1.

    One pass serves all classes: a pixel next to a uniform window of class c *is* class c.
    """
    h, w = classes.shape
    padded = np.pad(classes, 1, mode="edge")  # edge padding: objects touching the border are not eroded
    interior = padded >= 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                interior[1:-1, 1:-1] &= padded[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx] == classes
    interior[0, :] = interior[-1, :] = False
    interior[:, 0] = interior[:, -1] = False
    # dilate the interiors by 3×3 (separable OR), keeping only pixels of the same class
    rows = interior[:, :-2] | interior[:, 1:-1] | interior[:, 2:]
    near = rows[:-2] | rows[1:-1] | rows[2:]
    return np.where(near, classes, -1).astype(np.int8)


def _border_colours(classes: np.ndarray, min_share: float) -> list[str]:
    border = np.concatenate([classes[0], classes[-1], classes[1:-1, 0], classes[1:-1, -1]])
    counts = np.bincount(border[border >= 0], minlength=len(PALETTE_NAMES))
    order = np.argsort(-counts, kind="stable")
    return [PALETTE_NAMES[i] for i in order if counts[i] >= min_share * len(border) and counts[i] > 0]


def _dilate3(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    rows = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
    return rows[:-2] | rows[1:-1] | rows[2:]


def _regrow(regions: Regions, k: int, classes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Region k regrown ``_REGROW_STEPS`` 3×3 steps into the unopened pixels of its colour: (mask
    cropped to its new box, box [x0, y0, x1, y1] inclusive)."""
    height, width = classes.shape
    x0, y0, x1, y1 = (int(v) for v in regions.boxes[k])
    ex0, ey0 = max(0, x0 - _REGROW_STEPS), max(0, y0 - _REGROW_STEPS)
    ex1, ey1 = min(width - 1, x1 + _REGROW_STEPS), min(height - 1, y1 + _REGROW_STEPS)
    same_colour = classes[ey0:ey1 + 1, ex0:ex1 + 1] == regions.classes[k]
    mask = np.zeros_like(same_colour)
    mask[y0 - ey0:y1 - ey0 + 1, x0 - ex0:x1 - ex0 + 1] = regions.mask(k)
    for _ in range(_REGROW_STEPS):
        mask = _dilate3(mask) & same_colour
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    mask = mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    return mask, [ex0 + int(xs[0]), ey0 + int(ys[0]), ex0 + int(xs[-1]), ey0 + int(ys[-1])]


# ------------------------------------------------------------------------------------------ regions


@dataclass(frozen=True)
class Regions:
    """Connected same-class regions of a class map (8-connectivity), from :func:`label_regions`.

    Per region: ``classes``, ``areas``, ``boxes`` (x0, y0, x1, y1 inclusive) and ``border_contact``
    (pixels on the image border, corners counted once per side). ``mask(k)`` is region k's boolean
    mask cropped to its box."""

    classes: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    border_contact: np.ndarray
    run_ids: np.ndarray  # H×W: the run each pixel belongs to (meaningless where class_map < 0)
    region_of_run: np.ndarray
    class_map: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)

    def mask(self, k: int) -> np.ndarray:
        x0, y0, x1, y1 = (int(v) for v in self.boxes[k])
        runs = self.run_ids[y0:y1 + 1, x0:x1 + 1]
        return (self.region_of_run[runs] == k) & (self.class_map[y0:y1 + 1, x0:x1 + 1] >= 0)


def label_regions(class_map: np.ndarray) -> Regions:
    """Label the connected regions of equal class (>= 0) in an H×W integer map, 8-connected.

    Union-find over horizontal runs, vectorised. Runs come from a row-wise diff. Each link between
    overlapping same-class runs in adjacent rows becomes an edge. Each round hooks every edge's
    larger root onto its smaller one, then compresses paths fully; rounds repeat until no edge
    joins two roots. Fine for 2048² images.
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise InvalidArgumentError(f"class map must be 2-D, got shape {class_map.shape}")
    h, w = class_map.shape
    valid = class_map >= 0
    starts = valid.copy()
    starts[:, 1:] &= class_map[:, 1:] != class_map[:, :-1]
    ends = valid.copy()
    ends[:, :-1] &= class_map[:, :-1] != class_map[:, 1:]
    run_ids = (np.cumsum(starts.ravel(), dtype=np.int64) - 1).reshape(h, w)
    run_y, run_x0 = np.nonzero(starts)
    _, run_x1 = np.nonzero(ends)  # row-major order: the k-th end closes the k-th start
    n_runs = len(run_y)

    # edges between runs of adjacent rows: vertical and both diagonal neighbours of equal class
    pairs = []
    for top_cols, bottom_cols in ((np.s_[:], np.s_[:]), (np.s_[:-1], np.s_[1:]), (np.s_[1:], np.s_[:-1])):
        top, bottom = class_map[:-1, top_cols], class_map[1:, bottom_cols]
        linked = (top >= 0) & (top == bottom)
        key = run_ids[:-1, top_cols][linked] * n_runs + run_ids[1:, bottom_cols][linked]
        # neighbouring pixels of the same two runs repeat the edge: keep the first of each stretch
        pairs.append(key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key)
    key = np.concatenate(pairs) if pairs else np.zeros(0, np.int64)
    a, b = key // max(n_runs, 1), key % max(n_runs, 1)

    parent = np.arange(n_runs)
    while len(a):
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            break
        a, b = a[apart], b[apart]  # edges inside one tree stay inside it: drop them for good
        root_a, root_b = root_a[apart], root_b[apart]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:  # full path compression: every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand

    roots, region_of_run = np.unique(parent, return_inverse=True)
    n_regions = len(roots)
    lengths = run_x1 - run_x0 + 1
    areas = np.bincount(region_of_run, weights=lengths, minlength=n_regions).astype(np.int64)
    boxes = np.empty((n_regions, 4), dtype=np.int64)
    boxes[:, 0] = boxes[:, 1] = np.iinfo(np.int64).max
    boxes[:, 2] = boxes[:, 3] = -1
    np.minimum.at(boxes[:, 0], region_of_run, run_x0)
    np.minimum.at(boxes[:, 1], region_of_run, run_y)
    np.maximum.at(boxes[:, 2], region_of_run, run_x1)
    np.maximum.at(boxes[:, 3], region_of_run, run_y)
    contact = lengths * ((run_y == 0) | (run_y == h - 1)) + (run_x0 == 0) + (run_x1 == w - 1)
    border_contact = np.bincount(region_of_run, weights=contact, minlength=n_regions).astype(np.int64)
    classes = class_map[run_y[roots], run_x0[roots]].astype(np.int64) if n_runs else np.zeros(0, np.int64)
    return Regions(classes, areas, boxes, border_contact, run_ids, region_of_run, class_map)


# ------------------------------------------------------------------------------------------ shapes


@lru_cache(maxsize=None)
def _template_fill(shape: str) -> float:
    return float(shape_mask(shape, 256, 256).mean())


@lru_cache(maxsize=512)
def _template(shape: str, height: int, width: int) -> np.ndarray:
    return shape_mask(shape, height, width)


def _shape_scores(mask: np.ndarray) -> dict[str, float]:
    """Soft IoU of a box-cropped object mask with each shape's template stretched to the box."""
    coverage = mask.astype(np.float32)
    h, w = coverage.shape
    if max(h, w) > _SHAPE_SCORE_SIDE:  # area-downsample big objects: the IoU barely changes
        scale = _SHAPE_SCORE_SIDE / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        coverage = F.adaptive_avg_pool2d(torch.from_numpy(coverage)[None, None], (h, w))[0, 0].numpy()
    scores = {}
    for shape in SHAPES:
        template = _template(shape, h, w)
        union = np.maximum(coverage, template).sum()
        scores[shape] = float(np.minimum(coverage, template).sum() / union) if union > 0 else 0.0
    return scores


# ------------------------------------------------------------------------------------------ seams


def seam_score(
    image: Image.Image | np.ndarray, boundaries_x: Iterable[int] = (), boundaries_y: Iterable[int] = ()
) -> SeamScore:
    """Visibility of tile seams.

    A boundary at x = b lies between pixel columns b-1 and b, so b must be in 1..W-1. Each line's
    energy is the mean |difference| of those two columns (over rows and channels). The score is
    the mean energy of the boundary lines over the mean of all other lines, with ``_SEAM_EPS`` grey
    levels added to both, so 1.0 means no seam. ``overall`` pools both axes' lines.
    """
    rgb = _as_rgb(image).astype(np.float32)
    height, width = rgb.shape[:2]
    col_energy = np.abs(np.diff(rgb, axis=1)).mean(axis=(0, 2))  # index j: between columns j and j+1
    row_energy = np.abs(np.diff(rgb, axis=0)).mean(axis=(1, 2))
    on_x, off_x = _split_lines(col_energy, _positions(boundaries_x, width, "boundaries_x"))
    on_y, off_y = _split_lines(row_energy, _positions(boundaries_y, height, "boundaries_y"))

    def ratio(on: np.ndarray, off: np.ndarray) -> float | None:
        if not len(on):
            return None
        return float((on.mean() + _SEAM_EPS) / ((off.mean() if len(off) else 0.0) + _SEAM_EPS))

    return SeamScore(
        x=ratio(on_x, off_x),
        y=ratio(on_y, off_y),
        overall=ratio(np.concatenate([on_x, on_y]), np.concatenate([off_x, off_y])),
    )


def _positions(boundaries: Iterable[int], length: int, name: str) -> np.ndarray:
    values = list(boundaries)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= length - 1:
            raise InvalidArgumentError(
                f"{name} must be integer pixel positions in 1..{length - 1} (between two pixels), got {v!r}"
            )
    return np.unique(np.asarray(values, dtype=np.int64))


def _split_lines(energy: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    on = np.zeros(len(energy), dtype=bool)
    on[positions - 1] = True
    return energy[on], energy[~on]


# ------------------------------------------------------------------------------------------ summary


def summarise(analyses: Sequence[ImageAnalysis]) -> dict[str, Any]:
    """Benchmark rates over many analyses, as plain JSON-ready numbers.

    ``shape_match_rate`` counts only prompts that name a shape. ``mean_relative_size`` and
    ``mean_image_relative_size`` average over all counted objects. ``mean_centre_offset`` is, over
    single-object images, the object box centre's distance from the image centre as a fraction of
    the half-side, the larger of the two axes (0: centred, 1: at the border; training objects are
    within 0.16); ``border_touch_rate`` the share of images whose largest prompted object touches
    the border (cut off by the frame). ``seam_score_mean`` averages
    over analyses with a seam score. Each is None when there is nothing to average.
    """
    analyses = list(analyses)
    if not analyses:
        raise InvalidArgumentError("summarise needs at least one analysis")
    for a in analyses:
        if not isinstance(a, ImageAnalysis):
            raise InvalidArgumentError(f"summarise takes ImageAnalysis objects, got {type(a).__name__}")
    counts = np.array([a.n_objects for a in analyses])
    shape_matches = [a.shape_match for a in analyses if a.shape_match is not None]
    sizes = [s for a in analyses for s in a.relative_sizes]
    image_sizes = [s for a in analyses for s in a.image_relative_sizes]
    seams = [a.seam.overall for a in analyses if a.seam is not None and a.seam.overall is not None]
    offsets = [_centre_offset(a.object_boxes[0], a.width, a.height) for a in analyses if a.n_objects == 1]
    touching = [bool(a.object_boxes) and _touches_border(a.object_boxes[0], a.width, a.height) for a in analyses]

    def mean(values: Sequence[float]) -> float | None:
        return float(np.mean(values)) if len(values) else None

    return {
        "n": len(analyses),
        "mean_objects": float(counts.mean()),
        "duplication_rate": float((counts > 1).mean()),
        "single_object_rate": float((counts == 1).mean()),
        "empty_rate": float((counts == 0).mean()),
        "objects_histogram": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
        "mean_other_objects": float(np.mean([a.n_other_objects for a in analyses])),
        "fidelity_rate": float(np.mean([a.fidelity for a in analyses])),
        "colour_match_rate": float(np.mean([a.colour_match for a in analyses])),
        "shape_match_rate": mean([float(m) for m in shape_matches]),
        "mean_relative_size": mean(sizes),
        "mean_image_relative_size": mean(image_sizes),
        "mean_unclassified_frac": float(np.mean([a.unclassified_frac for a in analyses])),
        "seam_score_mean": mean(seams),
        "mean_centre_offset": mean(offsets),
        "border_touch_rate": float(np.mean(touching)),
    }


def _centre_offset(box: Sequence[int], width: int, height: int) -> float:
    x0, y0, x1, y1 = box
    return float(max(abs((x0 + x1) / 2 - (width - 1) / 2) / (width / 2),
                     abs((y0 + y1) / 2 - (height - 1) / 2) / (height / 2)))


def _touches_border(box: Sequence[int], width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= 0 or y0 <= 0 or x1 >= width - 1 or y1 >= height - 1


# ------------------------------------------------------------------------------------------ inputs


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only)
    if not isinstance(image, np.ndarray):
        raise InvalidArgumentError(f"image must be a PIL image or an H×W×3 uint8 array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgumentError(f"image array must have shape H×W×3 (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidArgumentError(f"image array must be uint8 (0–255), got {image.dtype}")
    if min(image.shape[:2]) < 3:
        raise InvalidArgumentError(f"image must be at least 3×3 pixels, got {image.shape[1]}×{image.shape[0]}")
    return image


def _parse_prompt(prompt: str) -> tuple[str, str | None]:
    if not isinstance(prompt, str):
        raise InvalidArgumentError(f"prompt must be a string, got {type(prompt).__name__}")
    colour, shape = parse_caption(prompt)
    if colour is None:
        raise InvalidArgumentError(
            f"prompt {prompt!r} names no object colour before ' on '; "
            f"the toy world's object colours are: {', '.join(OBJECT_COLOURS)}"
        )
    return colour, shape

"""Aspect-ratio buckets of Any-Size-Diffusion's ARAD (Table 5 of the paper) and the assignment rule.

ARAD fine-tunes on images grouped into nine ratio–size buckets; the ASD pipeline's stage I
generates at the bucket nearest the requested ratio. The paper's table is for a 512-px model
(SD 2.1-base); :func:`scaled_buckets` scales every side by native/512 and rounds it to the model's
pixel multiple, so the same nine shapes serve any model (toy: 128 px, SDXL: 1024 px).

Ratios are r = H/W (Algorithm 1), computed from the sizes (the paper prints 1.3330 for 768/576). :func:`nearest_bucket` is Algorithm 1: argmin |r - r_i| on the
linear scale, and a tie goes to the *later* bucket of the table (its loop keeps an index when
``distance <= best``). ``rule="log"`` measures |log r - log r_i| instead, symmetric between
portrait and landscape (spec §2.3); ties again go to the later bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .errors import InvalidArgumentError, check_choice


@dataclass(frozen=True)
class Bucket:
    height: int
    width: int

    @property
    def ratio(self) -> float:
        return self.height / self.width

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


#: Table 5 of the ASD paper, in its order, as (H, W) pixels for a 512-px model
PAPER_BUCKETS: tuple[Bucket, ...] = tuple(
    Bucket(h, w) for h, w in [
        (512, 512), (576, 768), (768, 576), (576, 1024), (1024, 576),
        (640, 1024), (1024, 640), (512, 1024), (1024, 512),
    ]
)
PAPER_NATIVE = 512
RULES = ("paper", "log")


def scaled_buckets(native: int | tuple[int, int], multiple: int = 8, table: Sequence[Bucket] = PAPER_BUCKETS,
                   table_native: int = PAPER_NATIVE) -> tuple[Bucket, ...]:
    """``table`` with every side scaled to the model's native area, rounded to the nearest ``multiple``.

    ``native`` is the native side, or its (height, width): the scale is sqrt(area) / table_native,
    so a 512² model gets the paper's sizes and SDXL (1024²) twice them.
    """
    h, w = (native, native) if isinstance(native, int) else (int(native[0]), int(native[1]))
    if h <= 0 or w <= 0 or multiple <= 0:
        raise InvalidArgumentError(f"native size and multiple must be positive, got {native} and {multiple}")
    scale = math.sqrt(h * w) / table_native

    def side(v: int) -> int:
        return max(multiple, int(round(v * scale / multiple)) * multiple)

    return tuple(Bucket(side(b.height), side(b.width)) for b in table)


def nearest_bucket(height: float, width: float, buckets: Sequence[Bucket], rule: str = "paper") -> int:
    """Index of the bucket whose ratio H/W is nearest that of ``height`` × ``width`` (ties: the later)."""
    check_choice("bucket rule", rule, RULES)
    if not buckets:
        raise InvalidArgumentError("no buckets given")
    if not (height > 0 and width > 0):
        raise InvalidArgumentError(f"image sides must be positive, got {height}x{width}")
    r = height / width
    best, best_d = -1, math.inf
    for i, b in enumerate(buckets):
        d = abs(math.log(r) - math.log(b.ratio)) if rule == "log" else abs(r - b.ratio)
        if d <= best_d:  # Algorithm 1 keeps the later index on a tie
            best, best_d = i, d
    return best


def parse_buckets(text: str, multiple: int = 8) -> tuple[Bucket, ...]:
    """User buckets ``"WxH,WxH,..."`` (pixels; each side a positive multiple of ``multiple``)."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise InvalidArgumentError(f"bucket {part!r} is not WIDTHxHEIGHT, e.g. 768x576") from None
        if w <= 0 or h <= 0 or w % multiple or h % multiple:
            raise InvalidArgumentError(f"bucket {part}: sides must be positive multiples of {multiple}")
        out.append(Bucket(h, w))
    if not out:
        raise InvalidArgumentError("no buckets given; e.g. --buckets 512x512,768x576,576x768")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"repeated bucket in {text!r}")
    return tuple(out)

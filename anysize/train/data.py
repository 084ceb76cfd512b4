"""Image–caption datasets for fine-tuning, bucketed by aspect ratio, robust to bad entries.

A dataset is either a folder of images with sidecar captions (``cat.png`` + ``cat.txt``, searched
recursively) or a manifest: JSONL lines or CSV rows with an image path (``image``, ``file_name``
or ``path``; relative to the manifest's folder) and a caption (``caption``, ``text`` or
``prompt``), optionally ``width`` and ``height`` so the scan need not open the image.

Scanning reads only image headers (PIL opens lazily), so a large dataset is indexed without
decoding it, and each entry gets its bucket from its size. Entries that cannot be used are
skipped and counted by reason — unreadable image, missing or empty caption, image smaller than
``min_side`` — never raised: one bad file must not end a long run. A file that passes the scan
but fails to decode later is counted and replaced by its bucket's next entry (see
:meth:`BucketedImages.load`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..buckets import Bucket, nearest_bucket
from ..errors import InvalidArgumentError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_IMAGE_KEYS = ("image", "file_name", "path")
_CAPTION_KEYS = ("caption", "text", "prompt")


@dataclass(frozen=True)
class Entry:
    path: Path
    caption: str
    width: int
    height: int
    bucket: int


@dataclass
class BucketedImages:
    """The usable entries of a dataset, grouped by bucket, and what was skipped and why."""

    buckets: tuple[Bucket, ...]
    entries: list[Entry]
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        #: entries that failed to decode when loaded (a truncated file passes the header-only scan)
        self.undecodable: set[int] = set()
        self.by_bucket: dict[int, list[int]] = {}
        for i, e in enumerate(self.entries):
            self.by_bucket.setdefault(e.bucket, []).append(i)

    def counts(self) -> dict[str, int]:
        """Entries per bucket, by the bucket's WxH (for logs and the run's metadata)."""
        return {str(self.buckets[b]): len(ix) for b, ix in sorted(self.by_bucket.items())}

    def load(self, index: int, rng: np.random.Generator, random_crop: bool = True) -> tuple[torch.Tensor, str]:
        """Entry ``index`` as a (3, H, W) tensor in [-1, 1] at its bucket's size, and its caption.

        The image is resized to *cover* the bucket (aspect ratio kept) and cropped to it — a random
        crop for training, the centre otherwise (spec §2.3: no distortion, unlike a plain resize).
        A file that does not decode (a truncated PNG passes the header-only scan) is counted once
        (``skipped['undecodable at load']``), never opened again, and replaced by the next entry of
        the same bucket, so a batch keeps its shape; the replacement is the same whether the failure
        is new or remembered, so a resumed run draws exactly the same images.
        """
        members = self.by_bucket[self.entries[index].bucket]
        start = members.index(index)
        for k in range(len(members)):
            i = members[(start + k) % len(members)]
            if i in self.undecodable:
                continue
            e = self.entries[i]
            try:
                with Image.open(e.path) as im:
                    img = im.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError):
                self.undecodable.add(i)
                self.skipped["undecodable at load"] += 1
                continue
            return to_bucket(img, self.buckets[e.bucket], rng, random_crop), e.caption
        raise InvalidArgumentError(f"no image of bucket {self.buckets[self.entries[index].bucket]} can be decoded")


def to_bucket(img: Image.Image, bucket: Bucket, rng: np.random.Generator | None = None,
              random_crop: bool = True) -> torch.Tensor:
    """Resize ``img`` to cover ``bucket`` (bicubic, aspect kept) and crop to it; (3, H, W) in [-1, 1]."""
    w, h = img.size
    scale = max(bucket.height / h, bucket.width / w)
    nw, nh = max(bucket.width, round(w * scale)), max(bucket.height, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    dx, dy = nw - bucket.width, nh - bucket.height
    if random_crop and rng is not None:
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    else:
        left, top = dx // 2, dy // 2
    img = img.crop((left, top, left + bucket.width, top + bucket.height))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _rows(source: Path) -> list[tuple[Path, str | None, int | None, int | None]]:
    """(image path, caption or None, width or None, height or None) for every row of a dataset."""
    if source.is_dir():
        rows = []
        for p in sorted(source.rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            txt = p.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None
            rows.append((p, caption, None, None))
        return rows
    suffix = source.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise InvalidArgumentError(f"dataset {source} must be a folder, a .jsonl or a .csv manifest")
    if not source.is_file():
        raise InvalidArgumentError(f"dataset {source} does not exist")
    if suffix == ".csv":
        with source.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    else:
        records = []
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            records.append(rec if isinstance(rec, dict) else {"__bad__": n})
    rows = []
    for rec in records:
        image = next((rec[k] for k in _IMAGE_KEYS if rec.get(k)), None)
        caption = next((rec[k] for k in _CAPTION_KEYS if rec.get(k) is not None), None)
        path = source.parent / str(image) if image else None

        def num(k):
            try:
                return int(rec[k]) if rec.get(k) not in (None, "") else None
            except (TypeError, ValueError):
                return None

        rows.append((path, None if caption is None else str(caption), num("width"), num("height")))
    return rows


def scan(source: str | Path, buckets: Sequence[Bucket], *, min_side: int = 0, rule: str = "paper") -> BucketedImages:
    """Index a dataset: every usable entry with its bucket; skipped entries counted by reason."""
    source = Path(source)
    if not source.exists():
        raise InvalidArgumentError(f"dataset {source} does not exist")
    entries: list[Entry] = []
    skipped: Counter = Counter()
    for path, caption, w, h in _rows(source):
        if path is None:
            skipped["no image path"] += 1
            continue
        caption = " ".join((caption or "").split())
        if not caption:
            skipped["missing caption"] += 1
            continue
        if w is None or h is None:
            size = _image_size(path)
            if size is None:
                skipped["unreadable image"] += 1
                continue
            w, h = size
        if min(w, h) < min_side:
            skipped["smaller than min side"] += 1
            continue
        entries.append(Entry(path, caption, w, h, nearest_bucket(h, w, buckets, rule)))
    if not entries:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no image files"
        raise InvalidArgumentError(f"dataset {source} has no usable image–caption pair ({reasons})")
    return BucketedImages(tuple(buckets), entries, skipped)

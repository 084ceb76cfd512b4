"""Image-quality metrics of the field, computed the same way for every method (``anysize eval metrics``).

Conventions (see ``shared/specs/ecosystem.md`` §3; every number states them in ``metrics.json``):

* **FID_r / KID_r** ("resized"): each whole image, whatever its aspect ratio, is resized to the
  feature network's input (299x299 for Inception v3) with PIL bicubic with antialiasing (clean-fid's
  "clean" resize), and compared with the reference images treated the same way.
* **FID_c / KID_c** ("crops"): ``crops`` random crops of ``crop_size`` px (default: the model's
  native side) per image, each resized to the input size, against the same number of crops per
  reference image. Crop positions come from a ``torch.Generator`` seeded with the row's seed
  (generated images) or ``crop_seed + index`` (reference images): the same set, every run.
* **FID_b / KID_b** ("base"): the generated images against the same model's images at its native
  size for the same prompts and seeds (no real data needed), both resized whole.
* **IS**: Inception Score on the resized images (``is_r``) and on the crops (``is_c``), 10 splits.
* **KID**: mean and std over ``subsets`` random subsets of ``subset_size`` images of the unbiased
  MMD² with the cubic polynomial kernel; the estimate is unbiased, so it can be slightly negative
  for two samples of one distribution. ``subset_size`` defaults to min(1000, both set sizes).
* **CLIP score**: torchmetrics ``CLIPScore`` with ``openai/clip-vit-large-patch14`` by default,
  i.e. ``100 * max(cos(image, text), 0)`` (the ×100 scale, ~30 for good SD images); the processor
  resizes the short side to 224 and centre-crops; prompts longer than 77 tokens are truncated.

The statistics are torchmetrics' (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``, ``CLIPScore``); the features come from torch-fidelity's Inception v3 with the
original FID weights (``inception-v3-compat``), which torch-fidelity downloads on first use. Each image
goes through the network once; its pooled features (2048) and logits then feed the metrics through a
pass-through module. Tests inject a small local network instead (:mod:`anysize.testing.eval`):
anything callable on a uint8 (N, 3, S, S) batch returning ``(features (N, D), logits (N, C))`` with an
``input_size`` attribute S and a ``name``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgumentError

__all__ = [
    "CLIP_MODEL", "DEFAULT_MANIFEST", "PROTOCOL_VERSION", "IMAGE_SUFFIXES", "METRICS", "ClipScorer", "FeatureSet", "ManifestRow",
    "crop_boxes", "default_extractor", "extract", "fid", "find_images", "image_size", "inception_score", "kid", "list_images",
    "load_manifest", "resize_clean",
]

from .protocol import (  # noqa: F401  (the protocol's names, read here by run.py and the CLI)
    CLIP_MODEL, CLIP_SCALE, DEFAULT_MANIFEST, IMAGE_SUFFIXES, KID_MAX_SUBSET, METRICS, PROTOCOL_VERSION, RESIZE,
)


# ------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class ManifestRow:
    id: str
    prompt: str
    seed: int


def load_manifest(path: str | os.PathLike | None = None, limit: int | None = None) -> list[ManifestRow]:
    """Rows of a JSONL prompt manifest (``{"id", "prompt", "seed"}`` per line); the smoke set by default."""
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"cannot read prompt manifest {path}: {getattr(e, 'strerror', None) or e}") from None
    rows, ids = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            row = ManifestRow(str(obj["id"]), obj["prompt"], obj["seed"])
        except (ValueError, KeyError, TypeError):
            raise InvalidArgumentError(
                f"{path} line {n} is not a JSON object with id, prompt and seed: {line[:80]!r}"
            ) from None
        if not isinstance(row.prompt, str) or not row.prompt.strip():
            raise InvalidArgumentError(f"{path} line {n}: prompt must be a non-empty string")
        if isinstance(row.seed, bool) or not isinstance(row.seed, int) or not 0 <= row.seed < 2**63:
            raise InvalidArgumentError(f"{path} line {n}: seed must be an integer in [0, 2^63), got {row.seed!r}")
        if not row.id or any(c in row.id for c in "/\\\0") or row.id in (".", ".."):
            raise InvalidArgumentError(f"{path} line {n}: id {row.id!r} cannot be a file name")
        if row.id in ids:
            raise InvalidArgumentError(f"{path} line {n}: duplicate id {row.id!r}")
        ids.add(row.id)
        rows.append(row)
    if not rows:
        raise InvalidArgumentError(f"prompt manifest {path} has no rows")
    if limit is not None:
        if limit < 1:
            raise InvalidArgumentError(f"--limit must be a positive integer, got {limit}")
        rows = rows[:limit]
    return rows


def coco_manifest(captions_json: str | os.PathLike, n: int = 1000, seed: int = 0) -> list[ManifestRow]:
    """``n`` captions from a COCO ``captions_*.json`` file: one per image, images drawn with ``seed``.

    Row ids are the COCO annotation ids and row seeds ``0..n-1``, so the manifest is frozen by the
    (file, n, seed) triple.
    """
    try:
        data = json.loads(Path(captions_json).read_text(encoding="utf-8"))
        anns = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidArgumentError(f"{captions_json} is not a COCO captions file: {e}") from None
    first: dict[int, dict] = {}
    for a in sorted(anns, key=lambda a: a["id"]):
        first.setdefault(a["image_id"], a)
    images = sorted(first)
    if n > len(images):
        raise InvalidArgumentError(f"{captions_json} has captions for {len(images)} images, fewer than {n}")
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return [ManifestRow(str(first[images[j]]["id"]), " ".join(first[images[j]]["caption"].split()), i)
            for i, j in enumerate(order)]


#: caption columns tried in order when none is named (LAION metadata: TEXT; img2dataset: caption)
CAPTION_COLUMNS = ("TEXT", "caption", "text", "prompt", "CAPTION")


def _read_table(path: Path) -> list[dict]:
    """Rows of a caption table: .parquet (needs pyarrow), .csv, .tsv, .jsonl / .json lines."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InvalidArgumentError(
                    f"{path} is parquet, which needs pyarrow (pip install pyarrow), or convert it to CSV/JSONL"
                ) from None
            return pq.read_table(path).to_pylist()
        if suffix in (".csv", ".tsv"):
            import csv

            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".jsonl", ".json"):
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot read the caption table {path}: {e}") from None
    raise InvalidArgumentError(f"{path}: caption tables must be .parquet, .csv, .tsv or .jsonl, not {suffix or 'no suffix'!r}")


def _as_int(v) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def table_manifest(path: str | os.PathLike, n: int = 1000, seed: int = 0, *, column: str | None = None,
                   min_side: int = 0) -> list[ManifestRow]:
    """``n`` captions from a caption table (e.g. LAION metadata parquet), rows drawn with ``seed``.

    ``column`` names the caption column (default: the first of :data:`CAPTION_COLUMNS` present).
    ``min_side`` keeps only rows whose ``WIDTH``/``HEIGHT`` (or ``width``/``height``) columns are both
    at least that many pixels — the high-resolution subsets the any-size papers evaluate on; rows
    without sizes are then dropped. Empty captions and exact duplicate captions are skipped. Row ids
    are the table's ``key``/``id`` column when present, else the row number; row seeds are 0..n-1.
    """
    path = Path(path)
    table = _read_table(path)
    if not table:
        raise InvalidArgumentError(f"the caption table {path} has no rows")
    names = list(table[0])
    if column is None:
        column = next((c for c in CAPTION_COLUMNS if c in names), None)
        if column is None:
            raise InvalidArgumentError(f"{path} has no caption column ({', '.join(CAPTION_COLUMNS)}); its columns: "
                                       f"{', '.join(map(str, names))}; name one with --column")
    elif column not in names:
        raise InvalidArgumentError(f"{path} has no column {column!r}; its columns: {', '.join(map(str, names))}")
    id_col = next((c for c in ("key", "id", "SAMPLE_ID") if c in names), None)
    size_cols = next(((w, h) for w, h in (("WIDTH", "HEIGHT"), ("width", "height")) if w in names and h in names), None)
    if min_side and size_cols is None:
        raise InvalidArgumentError(f"--min-side needs WIDTH/HEIGHT columns, which {path} lacks")
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for i, row in enumerate(table):
        text = " ".join(str(row.get(column) or "").split())
        if not text or text in seen:
            continue
        if min_side:
            w, h = (_as_int(row.get(c)) for c in size_cols)
            if w is None or h is None or min(w, h) < min_side:
                continue
        seen.add(text)
        kept.append((str(row[id_col]) if id_col else str(i), text))
    if n > len(kept):
        raise InvalidArgumentError(
            f"{path} has {len(kept)} usable captions{f' with both sides >= {min_side}' if min_side else ''}, fewer than {n}"
        )
    order = np.random.default_rng(seed).permutation(len(kept))[:n]
    return [ManifestRow(kept[j][0], kept[j][1], i) for i, j in enumerate(order)]


def write_manifest(rows: Sequence[ManifestRow]) -> str:
    return "".join(json.dumps({"id": r.id, "prompt": r.prompt, "seed": r.seed}, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------ images


def list_images(folder: str | os.PathLike, what: str = "reference folder") -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"{what} {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InvalidArgumentError(f"{what} {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def find_images(folder: str | os.PathLike, rows: Sequence[ManifestRow], what: str = "--from-dir") -> list[Path]:
    """The image ``<id>.<ext>`` of every manifest row in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"{what} {folder} does not exist or is not a directory")
    by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [r.id for r in rows if r.id not in by_stem]
    if missing:
        raise InvalidArgumentError(
            f"{what} {folder} lacks {len(missing)} of the {len(rows)} manifest images, e.g. {missing[0]}.png "
            "(images must be named <id>.png after the manifest ids)"
        )
    return [by_stem[r.id] for r in rows]


def open_rgb(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot read {path} as an image: {e}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot read {path} as an image: {e}") from None


def resize_clean(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image -> uint8 (3, size, size), PIL bicubic with antialiasing (clean-fid's 'clean' mode)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def crop_boxes(width: int, height: int, crop: int, k: int, seed: int) -> list[tuple[int, int, int, int]]:
    """``k`` crop boxes (left, top, right, bottom) of ``crop`` px inside a width x height image.

    Positions are uniform over all valid places, drawn from a generator seeded with ``seed``: the
    same arguments always give the same boxes.
    """
    if crop < 1 or k < 1:
        raise InvalidArgumentError(f"crop size and crop count must be positive, got {crop} and {k}")
    if width < crop or height < crop:
        raise InvalidArgumentError(f"a {width}x{height} image is smaller than the {crop} px crop")
    g = torch.Generator().manual_seed(int(seed))
    lefts = torch.randint(0, width - crop + 1, (k,), generator=g).tolist()
    tops = torch.randint(0, height - crop + 1, (k,), generator=g).tolist()
    return [(x, y, x + crop, y + crop) for x, y in zip(lefts, tops)]


# ------------------------------------------------------------------------------------------ features


class InceptionExtractor:
    """torch-fidelity's Inception v3 with the original FID weights: pool3 features (2048) and logits.

    ``weights`` is a local copy of torch-fidelity's weight file for machines without internet;
    by default torch-fidelity downloads it once into the torch hub cache.
    """

    name = "inception-v3-compat (torch-fidelity, FID weights)"
    input_size = 299

    def __init__(self, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise InvalidArgumentError(
                "FID/KID/IS need torch-fidelity for the Inception weights: pip install 'anysize[eval]'"
            ) from None
        if weights is not None and not Path(weights).is_file():
            raise InvalidArgumentError(f"Inception weights file {weights} does not exist")
        self.device = torch.device(device)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                              feature_extractor_weights_path=None if weights is None else str(weights))
        except (OSError, RuntimeError, EOFError) as e:  # no internet, corrupt or foreign weight file
            where = weights if weights is not None else "torch-fidelity's download"
            raise InvalidArgumentError(
                f"cannot load the Inception weights from {where}: {e}; on a machine without internet, copy "
                f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth and pass --inception-weights FILE"
            ) from None
        self.net = net.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net(images.to(self.device))
        return pool.float().cpu(), logits.float().cpu()


def default_extractor(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None):
    """The feature network of real evaluations (downloads its weights on first use, like torch-fidelity)."""
    return InceptionExtractor(device, weights)


@dataclass
class FeatureSet:
    """Pooled features and logits of a set of images (or crops), row-aligned."""

    features: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]


def extract(images: Iterable[torch.Tensor], extractor, batch: int = 32) -> FeatureSet:
    """Run ``extractor`` over uint8 (3, S, S) tensors in batches."""
    feats, logits, buf = [], [], []

    def flush():
        if buf:
            f, lg = extractor(torch.stack(buf))
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
            buf.clear()

    for im in images:
        buf.append(im)
        if len(buf) == batch:
            flush()
    flush()
    if not feats:
        raise InvalidArgumentError("no images to extract features from")
    return FeatureSet(torch.cat(feats), torch.cat(logits))


def image_features(paths: Sequence[Path], extractor, *, crops: int = 0, crop_size: int | None = None,
                   crop_seeds: Sequence[int] | None = None, whole: bool = True,
                   what: str = "image") -> tuple[FeatureSet | None, FeatureSet | None]:
    """Features of each whole image (resized) and of ``crops`` seeded crops per image; one image in memory at a time."""
    s = extractor.input_size
    if crops:
        if crop_size is None:
            raise InvalidArgumentError("crop metrics need a crop size (--crop-size)")
        for p in paths:  # refuse before any feature work
            w, h = image_size(p)
            if w < crop_size or h < crop_size:
                raise InvalidArgumentError(
                    f"{what} {p} is {w}x{h}, smaller than the {crop_size} px crop; use --crop-size {min(w, h)} or "
                    f"less, or images at least {crop_size} px on each side"
                )
    def gen_whole():
        for p in paths:
            yield resize_clean(open_rgb(p), s)

    def gen_crops():
        for i, p in enumerate(paths):
            im = open_rgb(p)
            for box in crop_boxes(im.width, im.height, crop_size, crops, crop_seeds[i]):
                yield resize_clean(im.crop(box), s)

    whole_set = extract(gen_whole(), extractor) if whole else None
    crop_set = extract(gen_crops(), extractor) if crops else None
    return whole_set, crop_set


# ------------------------------------------------------------------------------------------ statistics


class _PassThrough(torch.nn.Module):
    """Hands precomputed features to a torchmetrics metric as if they were its network's output."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextlib.contextmanager
def _quiet_buffers():
    """torchmetrics warns that KID/IS keep their features in memory: here they are already in memory."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        yield


def _need(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise InvalidArgumentError(f"{what} needs at least {minimum} images per set, got {n}")


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (torchmetrics ``FrechetInceptionDistance``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _need(min(len(real), len(fake)), 2, "FID")
    m = FrechetInceptionDistance(feature=_PassThrough(real.shape[1]))
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    return max(float(m.compute()), 0.0)  # the matrix square root can leave -1e-9 for identical sets


def kid_subset_size(n_real: int, n_fake: int, requested: int | None = None) -> int:
    """The KID subset size: ``requested`` if the sets are that large, else min(1000, both sizes)."""
    n = min(n_real, n_fake)
    if requested is None:
        return min(KID_MAX_SUBSET, n)
    if requested < 2:
        raise InvalidArgumentError(f"the KID subset size must be at least 2, got {requested}")
    if requested > n:
        which = "generated" if n_fake <= n_real else "reference"
        raise InvalidArgumentError(
            f"the KID subset size {requested} is larger than the {n} {which} images (or crops); "
            f"use --kid-subset-size {n} or less, or more images"
        )
    return requested


def kid(real: torch.Tensor, fake: torch.Tensor, *, subset_size: int | None = None, subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """Unbiased KID (mean, std over subsets) with torchmetrics ``KernelInceptionDistance``.

    Subsets are drawn from a generator seeded with ``seed`` (the global RNG is left as it was).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _need(min(len(real), len(fake)), 2, "KID")
    size = kid_subset_size(len(real), len(fake), subset_size)
    if subsets < 1:
        raise InvalidArgumentError(f"the number of KID subsets must be positive, got {subsets}")
    with _quiet_buffers():
        m = KernelInceptionDistance(feature=_PassThrough(real.shape[1]), subsets=subsets, subset_size=size)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``, at most one per image; std 0 for one split) with torchmetrics."""
    from torchmetrics.image.inception import InceptionScore

    _need(len(logits), 2, "IS")
    splits = min(splits, len(logits))
    if splits < 1:
        raise InvalidArgumentError(f"the number of IS splits must be positive, got {splits}")
    with _quiet_buffers():
        m = InceptionScore(feature=_PassThrough(logits.shape[1]), splits=splits)
    m.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), (float(std) if splits > 1 else 0.0)


# ------------------------------------------------------------------------------------------ CLIP


class _ProjectedFeatures(torch.nn.Module):
    """A CLIPModel whose ``get_*_features`` return the projected embedding tensor.

    transformers 5 returns an output object (embedding in ``pooler_output``) where torchmetrics'
    CLIP score expects the tensor that transformers 4 returned; this adapts one to the other.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs):
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def _clip_loader(model: str | Callable[[], tuple[Any, Any]]):
    def load():
        if callable(model):
            net, processor = model()
        else:
            from transformers import CLIPModel, CLIPProcessor

            net, processor = CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
        return _ProjectedFeatures(net.eval()), processor

    return load


class ClipScorer:
    """Per-image and mean CLIP score on the ×100 scale (torchmetrics ``CLIPScore``).

    ``model`` is a CLIP model id or folder (default ``openai/clip-vit-large-patch14``, which
    transformers downloads on first use) or a callable returning ``(CLIPModel, CLIPProcessor)``.
    :meth:`add` returns one image's score, ``max(100 cos, 0)``; :meth:`mean` is torchmetrics'
    corpus score, ``max(100 * mean cos, 0)``.
    """

    def __init__(self, model: str | Callable[[], tuple[Any, Any]] = CLIP_MODEL, device: str | torch.device = "cpu"):
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.name = model if isinstance(model, str) else getattr(model, "name", "custom CLIP model")
        try:
            self.metric = CLIPScore(model_name_or_path=_clip_loader(model)).to(device)
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"cannot load the CLIP model {self.name}: {e}") from None
        self.device = torch.device(device)
        self.scores: list[float] = []

    @torch.no_grad()
    def add(self, image: Image.Image, prompt: str) -> float:
        t = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        score = float(self.metric(t.unsqueeze(0).to(self.device), [prompt]))
        self.scores.append(score)
        return score

    def mean(self) -> float:
        return float(self.metric.compute())

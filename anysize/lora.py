"""LoRAs as the front ends take them: ``Lora(path, scale)``, what a user may write for one, and
what the image metadata records of one.

    anysize.generate(model, "a castle", lora="loras/castle.safetensors")            # scale 1
    anysize.generate(model, "a castle", lora=[("style.safetensors", 0.8), Lora("detail/", 0.5)])
    anysize generate "a castle" --lora style.safetensors:0.8 --lora detail/

A LoRA is a local file (``.safetensors`` or ``.bin``) or a folder that diffusers'
``load_lora_weights`` reads (its ``pytorch_lora_weights.safetensors``, or its one ``.safetensors``
file). :func:`check_loras` resolves each to the weights file that is loaded and hashes it, so the
PNG records which weights made an image (:meth:`LoraFile.describe`: the path as given, the weights
file's name, the first 16 hex digits of its SHA-256 and the scale), and a metadata record given back
(``lora=config["loras"]``) is refused if its file has changed since.

The command line's ``PATH[:SCALE]`` (:func:`parse_lora`): the text after the *last* ``:`` is the
scale when it is a number, else the ``:`` is part of the path, so ``C:\\loras\\x.safetensors``,
``C:\\loras\\x.safetensors:0.8`` and ``style:v2.safetensors`` all mean what they say (a path that
itself ends in ``:NUMBER`` is written with an explicit scale: ``odd:2:1``).

Loading, activating and removing them is the model adapter's (:mod:`anysize.models.lora`). This
module imports neither torch nor diffusers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import InvalidArgumentError

__all__ = ["Lora", "LoraFile", "check_loras", "cli_loras", "format_lora", "parse_lora"]

#: the file diffusers' ``load_lora_weights`` reads in a folder (safetensors first), as diffusers names them
FOLDER_WEIGHTS = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
#: the hex digits of the SHA-256 the metadata keeps (as the batch runner's job ids)
HASH_DIGITS = 16
#: a scale after the last ':' of ``PATH:SCALE``: a plain decimal number (no inf/nan: those stay text)
_SCALE_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclasses.dataclass(frozen=True)
class Lora:
    """One LoRA of a run: a file or folder diffusers' ``load_lora_weights`` reads, and its weight."""

    path: str
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class LoraFile:
    """A checked :class:`Lora`: the weights file that is loaded, and its SHA-256."""

    lora: Lora
    weights: Path
    sha256: str

    @property
    def scale(self) -> float:
        return self.lora.scale

    def describe(self) -> dict[str, Any]:
        """What the image metadata records: the path as given, the weights file's name, its hash, the scale."""
        return {"path": self.lora.path, "file": self.weights.name, "sha256": self.sha256[:HASH_DIGITS],
                "scale": self.lora.scale}


def parse_lora(text: str, what: str = "--lora") -> Lora:
    """``PATH[:SCALE]`` -> :class:`Lora`: the text after the last ':' is the scale when it is a number."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"{what} needs PATH[:SCALE], the path of a LoRA file or folder, got {text!r}")
    path, sep, tail = text.rpartition(":")
    if sep and path and _SCALE_RE.match(tail.strip()):
        return Lora(path, float(tail))
    return Lora(text, 1.0)


def format_lora(lora: Lora) -> str:
    """The ``PATH:SCALE`` that :func:`parse_lora` reads back as ``lora``."""
    return f"{lora.path}:{lora.scale:g}"


def _scale(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{where}: the scale must be a finite number (e.g. 0.8), got {value!r}")
    return float(value)


def _path(value, where: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{where}: the path must be the path of a LoRA file or folder, got {value!r}")
    return value


#: the fields of a LoRA record (a batch row's object, or the metadata's record given back)
RECORD_FIELDS = ("path", "scale", "file", "sha256")


def _one(value, where: str) -> tuple[Lora, str | None]:
    """(Lora, expected SHA-256 prefix or None) of one item of ``lora=``."""
    if isinstance(value, LoraFile):  # checked before: its file must still be the one hashed
        return value.lora, value.sha256
    if isinstance(value, Lora):
        return Lora(_path(value.path, where), _scale(value.scale, where)), None
    if isinstance(value, (str, os.PathLike)):
        return Lora(_path(value, where)), None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(RECORD_FIELDS))
        if unknown:
            raise InvalidArgumentError(f"{where}: unknown field {unknown[0]!r}; a LoRA record has {', '.join(RECORD_FIELDS)}")
        if "path" not in value:
            raise InvalidArgumentError(f"{where}: a LoRA record needs its 'path'")
        expected = value.get("sha256")
        if expected is not None and not (isinstance(expected, str) and re.fullmatch(r"[0-9a-fA-F]{8,64}", expected)):
            raise InvalidArgumentError(f"{where}: sha256 must be hex digits, got {expected!r}")
        return Lora(_path(value["path"], where), _scale(value.get("scale", 1.0), where)), expected
    if _is_pair(value):
        return Lora(_path(value[0], where), _scale(value[1], where)), None
    raise InvalidArgumentError(
        f"{where} must be a path, a (path, scale) pair, a Lora(path, scale) or a record "
        f"{{'path': ..., 'scale': ...}}, got {type(value).__name__} {value!r}")


def _is_pair(value) -> bool:
    """A (path, scale) pair: a 2-tuple that starts with a path (several LoRAs go in a list)."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, os.PathLike))


def _items(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, Lora, LoraFile, Mapping)):
        return [value]
    if _is_pair(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InvalidArgumentError(
        f"lora must be a path, a (path, scale) pair, a Lora(path, scale), or a list of them, got "
        f"{type(value).__name__} {value!r}")


def check_loras(value, what: str = "lora") -> tuple[LoraFile, ...]:
    """Every LoRA of ``value`` (None, one, or a list; see the module doc) checked: the path exists and
    holds weights, the scale is a finite number, a record's sha256 matches; each hashed (cached by
    path, size and modification time). One-line :class:`~anysize.errors.InvalidArgumentError` otherwise."""
    items = _items(value)
    out = []
    for i, item in enumerate(items):
        where = what if len(items) == 1 else f"{what} {i + 1} of {len(items)}"
        lora, expected = _one(item, where)
        weights = weights_file(lora.path)
        digest = file_sha256(weights)
        if expected is not None and not digest.startswith(expected.lower()):
            raise InvalidArgumentError(
                f"the LoRA {lora.path} has changed: its weights' SHA-256 begins {digest[:HASH_DIGITS]}, the record "
                f"says {expected}")
        out.append(LoraFile(lora, weights, digest))
    return tuple(out)


def weights_file(path: str) -> Path:
    """The file diffusers' ``load_lora_weights`` reads for ``path`` (a file, or a folder's weights)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        head, sep, tail = str(path).rpartition(":")
        if sep and head and Path(head).expanduser().exists():  # PATH:SCALE whose scale is not a number
            raise InvalidArgumentError(
                f"LoRA {path}: {head} exists, but {tail!r} after the last ':' is not a scale (a finite number, e.g. "
                f"{head}:0.8)")
        raise InvalidArgumentError(
            f"LoRA {path} does not exist (give a .safetensors file or a folder; a scale goes after the last ':', "
            "e.g. style.safetensors:0.8)")
    if not p.is_dir():
        raise InvalidArgumentError(f"LoRA {path} is neither a file nor a folder")
    for name in FOLDER_WEIGHTS:
        if (p / name).is_file():
            return p / name
    found = sorted(q.name for q in p.glob("*.safetensors") if q.is_file())
    if len(found) == 1:  # diffusers takes a folder's only .safetensors file too
        return p / found[0]
    if found:
        raise InvalidArgumentError(f"LoRA folder {path} holds {len(found)} .safetensors files ({', '.join(found[:4])}"
                                   f"{', ...' if len(found) > 4 else ''}); give the file itself")
    raise InvalidArgumentError(f"LoRA folder {path} holds no LoRA weights ({FOLDER_WEIGHTS[0]} or a .safetensors file)")


_hash_lock = threading.Lock()
_hashes: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, remembered by (real path, size, modification time): a batch of a
    thousand jobs with one LoRA reads it once."""
    try:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with _hash_lock:
            if key in _hashes:
                return _hashes[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the LoRA {path}: {e.strerror or e}") from None
    with _hash_lock:
        _hashes[key] = h.hexdigest()
    return _hashes[key]


def cli_loras(values: Iterable[str] | None, what: str = "--lora") -> tuple[LoraFile, ...]:
    """The repeated ``--lora PATH[:SCALE]`` of a command, parsed and checked (before any model loads)."""
    values = list(values or ())
    return tuple(one for i, text in enumerate(values)
                 for one in check_loras(parse_lora(text, what), what if len(values) == 1 else f"{what} {i + 1}"))

"""Writing images: PNG files that carry their generation parameters, written atomically.

Every PNG gets two text chunks:

* ``parameters``: an A1111-style "infotext" string (prompt, negative prompt, then ``Key: value``
  pairs), so A1111, ComfyUI and civitai "PNG info" readers show how the image was made;
* ``anysize``: the complete generation config as JSON (UTF-8 iTXt, compressed), lossless, for
  :func:`read_metadata` and later tools.

Writes go to a temporary file in the target directory and are moved into place only once the PNG
is complete, so a crash, an encoding error or Ctrl-C never leaves a partial or temporary file (a
write killed outright leaves its temporary file, which the next run's first write into that
directory removes: :func:`remove_stale_temps`). An
existing file is never overwritten unless ``force=True``; the check is made by the final move
itself (a hard link, which fails if the name exists), so two writers cannot both win.

This module knows nothing about models.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidArgumentError, OutputError, OutputExistsError

__all__ = ["PARAMETERS_KEY", "METADATA_KEY", "infotext", "parse_infotext", "save_png", "save_json", "save_text", "check_writable", "read_metadata", "read_parameters"]

PARAMETERS_KEY = "parameters"
METADATA_KEY = "anysize"

# errors from os.link that mean "this filesystem/platform cannot hard-link", not "name taken"
_NO_LINK_ERRNOS = {
    getattr(errno, n) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "EMLINK", "ENOSYS", "EACCES", "EINVAL")
    if hasattr(errno, n)
}


# ------------------------------------------------------------------------------------------ infotext


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _quote(text: str) -> str:
    """Quote a value the way A1111 does, so ``Key: value, ...`` parsers split it correctly."""
    if any(c in text for c in ',\n:"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def infotext(config: dict) -> str:
    """The A1111-style ``parameters`` string for one image's config (see :meth:`GenerationResult.config_for`).

    ``<prompt>\\nNegative prompt: <neg>\\nSteps: N, Sampler: S, CFG scale: G, Seed: S, Size: WxH,
    Model: M, Method: NAME, <method options>, Version: anysize X`` (no negative line when empty).
    """
    prompt = config.get("prompt")
    if prompt is None:
        prompt = (config.get("prompts") or [""])[0]
    negative = config.get("negative_prompt")
    if negative is None:
        negative = (config.get("negative_prompts") or [""])[0]
    seed = config.get("seed")
    if seed is None:
        seed = (config.get("seeds") or [None])[0]

    pairs: list[tuple[str, Any]] = [
        ("Steps", config.get("steps")),
        ("Sampler", config.get("scheduler") or "default"),
        ("CFG scale", config.get("guidance")),
        ("Seed", seed),
        ("Size", f"{config.get('width')}x{config.get('height')}"),
        ("Model", config.get("model") or ""),
        ("Method", config.get("method")),
    ]
    for key, value in (config.get("method_options") or {}).items():
        pairs.append((str(key), value))
    loras = config.get("loras")
    if loras:  # each LoRA's name, weight and weights' hash (anysize's own key: A1111's "Lora hashes" hash differently)
        pairs.append(("LoRAs", ", ".join(f"{_lora_name(one)}:{one.get('scale'):g} ({one.get('sha256')})" for one in loras)))
    regions = config.get("regions")
    if regions:  # the box (or "mask") and prompt of each; the JSON chunk holds everything, masks included
        pairs.append(("Regions", "; ".join(f"{','.join(map(str, r['box'])) if 'box' in r else 'mask'}:{r.get('prompt')}"
                                           for r in regions)))
    upscale = config.get("upscale")
    if upscale:  # img2img enlargement: A1111's key for the strength, and where the image came from
        pairs += [("Denoising strength", upscale.get("strength")), ("Upscale source", upscale.get("source")),
                  ("Upscale from", "x".join(map(str, upscale.get("source_size") or [])))]
    for i, c in enumerate(config.get("controls") or []):  # A1111's ControlNet extension's key and fields
        fields = [("Model", c.get("model")), ("Image", c.get("image")), ("Weight", c.get("scale")),
                  ("Guidance Start", c.get("start")), ("Guidance End", c.get("end"))]
        if c.get("mode") is not None:
            fields.append(("Control Mode", c.get("mode")))
        pairs.append((f"ControlNet {i}", ", ".join(f"{k}: {_fmt(v)}" for k, v in fields)))
    runtime = config.get("runtime")
    if runtime:  # how the network ran, when not the default (eager, torch's SDPA choice)
        if runtime.get("compile"):
            pairs.append(("Compile", runtime.get("compile_backend") or "inductor"))
        if runtime.get("sdpa", "auto") != "auto":
            pairs.append(("SDPA", runtime.get("sdpa")))
    version = (config.get("versions") or {}).get("anysize")
    if version is None:
        from . import __version__ as version
    pairs.append(("Version", f"anysize {version}"))

    lines = [str(prompt)]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_quote(_fmt(v))}" for k, v in pairs))
    return "\n".join(lines)


def _lora_name(record: dict) -> str:
    path = str(record.get("path") or "").replace("\\", "/").rstrip("/")
    return path.rsplit("/", 1)[-1] or str(record.get("file") or "")


#: one ``Key: value`` pair of an infotext's last line; a value is JSON-quoted or runs to the next comma
_PARAM = re.compile(r'\s*([\w][\w \-/().]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """The inverse of :func:`infotext` for any A1111-style ``parameters`` string.

    Returns ``{"prompt": str, "negative_prompt": str, "params": {key: value text}}``: the prompt
    lines, the ``Negative prompt:`` lines, and the ``Key: value`` pairs of the last line (quoted
    values unquoted). A text whose last line holds no ``Steps:`` pair is all prompt.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"parameters must be text, got {type(text).__name__}")
    lines = text.strip("\n").split("\n")
    params: dict[str, str] = {}
    if lines and re.match(r"^\s*Steps:\s", lines[-1]):
        for key, value in _PARAM.findall(lines.pop()):
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' == value[-1]:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value[1:-1]
            params[key.strip()] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if not in_negative and line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(line)
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "params": params}


# ------------------------------------------------------------------------------------------ checks


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Fail fast, before any work, if :func:`save_png` could not write ``path``.

    Raises :class:`OutputError` when the file exists and ``force`` is false, when it is a directory,
    when a component of its directory is a regular file, or when the directory (or the nearest
    existing ancestor it would be created in) is not writable. Creates nothing. Returns the path.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path {path} is a directory; give a file name ending in .png")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError(path)
    parent = path.parent
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputError(f"cannot write {path}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "directory" if base == parent else f"directory {parent} cannot be created: its ancestor"
        raise OutputError(f"cannot write {path}: {what} {base} is not writable")
    return path


# ------------------------------------------------------------------------------------------ writing


def _pnginfo(config: dict):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # add_text writes tEXt when the string is latin-1, else (unicode prompts) an iTXt chunk
    info.add_text(PARAMETERS_KEY, infotext(config))
    info.add_itxt(METADATA_KEY, json.dumps(config, ensure_ascii=False, default=str), zip=True)
    return info


#: anysize's temporary files: ``.<name>.<8 hex>.tmp`` beside the file being written
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: a temporary file untouched this long, and older than this process, belongs to a write that died
STALE_TEMP_SECONDS = 600
_PROCESS_START = time.time()
_swept: set[str] = set()


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporary files a killed write left in ``directory`` (SIGKILL, power loss: no
    cleanup ran): anysize's own pattern, not modified since before this process started and for
    :data:`STALE_TEMP_SECONDS` (a live write, also another process's, keeps touching its file).
    Done once per directory per process, at its first write. Returns what was removed."""
    key = os.path.abspath(directory)
    if key in _swept:
        return []
    _swept.add(key)
    cutoff = min(_PROCESS_START, time.time() - STALE_TEMP_SECONDS)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        if not _TEMP_NAME.match(e.name):
            continue
        try:
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def _open_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new, exclusively created temporary file next to the target (mode from the umask, like open())."""
    remove_stale_temps(directory)
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise OutputError(f"cannot create a temporary file in {directory}")  # pragma: no cover


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _exists_error(path: Path) -> OutputError:
    return OutputExistsError(path)


def _move_into_place(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if the name is taken: the race-free no-overwrite
    except FileExistsError:
        raise _exists_error(path) from None
    except (AttributeError, NotImplementedError):
        pass
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
    else:
        _unlink_quietly(tmp)
        return
    # no hard links here (FAT, some network filesystems): claim the name exclusively, then replace it
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise _exists_error(path) from None
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(path)
        raise


def save_png(image, path: str | os.PathLike, config: dict, *, force: bool = False) -> Path:
    """Write ``image`` (PIL) as a PNG at ``path`` with ``parameters`` and ``anysize`` metadata.

    Atomic: nothing appears at ``path`` until the PNG is complete, and no temporary file is left on
    any error. Missing directories are created. Raises :class:`OutputError` if the file exists and
    ``force`` is false, or if the path cannot be written. Returns the path written.
    """
    path = Path(path)
    if not hasattr(image, "save") or not hasattr(image, "mode"):
        raise InvalidArgumentError(f"save_png needs a PIL image, got {type(image).__name__}")
    if path.is_dir():
        raise OutputError(f"output path {path} is a directory; give a file name ending in .png")
    if not force and (path.exists() or path.is_symlink()):
        raise _exists_error(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot write {path}: {_nearest_existing(directory)} is not a directory") from None
    except OSError as e:
        raise OutputError(f"cannot create directory {directory} for {path}: {e.strerror or e}") from None
    info = _pnginfo(config)
    _write_atomically(path, directory, lambda f: image.save(f, format="PNG", pnginfo=info), force)
    return path


def _write_atomically(path: Path, directory: Path, write: Callable[[Any], None], force: bool) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then move it into place."""
    try:
        fd, tmp = _open_temp(directory, path.name)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _move_into_place(tmp, path, force)
    except OutputError:
        _unlink_quietly(tmp)
        raise
    except OSError as e:
        _unlink_quietly(tmp)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:  # encoding errors, KeyboardInterrupt, ...: never leave the temporary file
        _unlink_quietly(tmp)
        raise


def save_json(payload: dict, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``payload`` as indented UTF-8 JSON, with the same atomic, no-overwrite rules as :func:`save_png`."""
    return _save_bytes((json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"),
                       path, force)


def save_text(text: str, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write UTF-8 text (Markdown, CSV), with the same atomic, no-overwrite rules as :func:`save_png`."""
    return _save_bytes(text.encode("utf-8"), path, force)


def _save_bytes(data: bytes, path: str | os.PathLike, force: bool) -> Path:
    path = Path(path)
    check_writable(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create directory {path.parent} for {path}: {e.strerror or e}") from None
    _write_atomically(path, path.parent, lambda f: f.write(data), force)
    return path


# ------------------------------------------------------------------------------------------ reading


def _text_chunks(path: str | os.PathLike) -> dict:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return dict(getattr(im, "text", None) or im.info)
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidArgumentError(f"cannot read {path} as an image: {e}") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The full generation config stored in a PNG written by :func:`save_png`."""
    text = _text_chunks(path).get(METADATA_KEY)
    if text is None:
        raise InvalidArgumentError(f"{path} has no anysize metadata")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"{path} has corrupt anysize metadata: {e}") from None


def read_parameters(path: str | os.PathLike) -> str | None:
    """The A1111-style ``parameters`` string of a PNG, or None."""
    return _text_chunks(path).get(PARAMETERS_KEY)

"""The embedded default model, used when no ``--model`` / ``model`` is given.

Until anysize's own small trained toy model ships, a tiny random-weight Stable Diffusion 1.x
pipeline (from :mod:`anysize.testing`) stands in for it. It is built once into the user cache and
then loaded like any other model, through diffusers' real ``from_pretrained`` path, so every code
path is exercised; its images are noise-like, not pictures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from .errors import ModelLoadError

#: folder name of the stand-in model in the cache; bump the suffix when its recipe changes
DEFAULT_MODEL_NAME = "default-tiny-sd1-v1"


def cache_dir() -> Path:
    """anysize's user cache: ``$ANYSIZE_CACHE``, else ``$XDG_CACHE_HOME/anysize``, else ``~/.cache/anysize``."""
    env = os.environ.get("ANYSIZE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "anysize"
    return Path.home() / ".cache" / "anysize"


def _complete(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def default_model_path() -> Path:
    """The folder of the embedded default model, building it on first use.

    This is a stand-in for anysize's own trained toy model (a later release): a tiny random-weight
    SD 1.x pipeline (``anysize.testing.save_tiny_pipeline("sd1", ...)``, 128x128 px native, VAE
    factor 8) saved as a normal diffusers folder under :func:`cache_dir` (``default-tiny-sd1-v1``).
    It loads through the real ``from_pretrained`` path, but its weights are random, so it produces
    noise-like images. Building takes a few seconds and happens once; the folder is built in a
    temporary sibling and renamed into place, so a concurrent or interrupted build never leaves a
    half-written model behind.
    """
    root = cache_dir()
    final = root / DEFAULT_MODEL_NAME
    if _complete(final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{DEFAULT_MODEL_NAME}.building-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()  # not mkdtemp: the model folder gets the usual permissions (umask), not 0700
    except OSError as e:
        raise ModelLoadError(
            f"cannot create the default model in {root}: {e.strerror or e}; set ANYSIZE_CACHE to a writable folder "
            "or pass --model"
        ) from None
    try:
        from .testing import save_tiny_pipeline

        save_tiny_pipeline("sd1", tmp)
        if final.exists() and not _complete(final):
            # a folder left by something else (not by us: our builds appear only complete); move it aside
            stale = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.stale-", dir=root))
            try:
                os.replace(final, stale / "old")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # not "another builder won the race": a real error
                raise
    except OSError as e:
        raise ModelLoadError(
            f"cannot create the default model in {root}: {e.strerror or e}; set ANYSIZE_CACHE to a writable folder "
            "or pass --model"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final

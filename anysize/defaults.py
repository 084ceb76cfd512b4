"""The embedded default model, used when no ``--model`` / ``model`` is given.

It is anysize's own toy text-to-image model (:mod:`anysize.toy`): a complete diffusers
``StableDiffusionPipeline`` with SD 1.5's U-Net block structure, trained from scratch on the toy
world of one coloured shape on a background, 128x128 px native (32x32 latent, VAE factor 4). Its
half-precision safetensors ship inside the package (``anysize/toy/model``) and load through
diffusers' real ``from_pretrained`` path, like any other model folder.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

#: the shipped diffusers folder of the toy model
SHIPPED_MODEL = Path(__file__).resolve().parent / "toy" / "model"


def default_model_path() -> Path:
    """The folder of the embedded default model (``anysize/toy/model`` inside the installed package)."""
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        raise ModelLoadError(
            f"the embedded default model is missing from this installation ({SHIPPED_MODEL}); reinstall anysize "
            "from its repository or a wheel, or pass --model"
        )
    return SHIPPED_MODEL

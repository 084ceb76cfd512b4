"""What a model's config files say before it is loaded: its pixel factor and its pipeline layout.

The command line checks sizes and ``--family`` with these before it loads anything, so this module
imports neither torch nor diffusers; it reads ``model_index.json`` and ``vae/config.json`` from a
local folder or from the local Hugging Face cache, and never downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

#: every supported family's pixel factor is a multiple of this (SD/SDXL 8, SD3/FLUX 16)
MIN_SIZE_FACTOR = 8

#: family -> the pipeline layout (the components in model_index.json) it shares with others;
#: detection can tell SD 1.x from 2.x only by hints in their configs, never one layout from another
LAYOUTS: dict[str, str] = {
    "sd1": "sd",
    "sd2": "sd",
    "sdxl": "sdxl",
    "sd3": "sd3",
    "flux": "flux",
    "sd-x4-upscaler": "sd-x4-upscaler",
}

#: families whose denoiser is a transformer over 2x2 latent patches (the pixel factor doubles)
PATCHED_FAMILIES = ("sd3", "flux")


def config_file(model: str | None, name: str) -> Path | None:
    """A config file of a local folder or an already cached hub model (never downloads)."""
    if model is None:
        return None
    path = Path(model).expanduser()
    if path.is_dir():
        f = path / name
        return f if f.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(model), name)
    except Exception:  # noqa: BLE001  (invalid repo ids and the like: just no hint)
        return None
    return Path(found) if isinstance(found, str) else None


def size_factor(model: str | None, family: str | None) -> tuple[int, str] | None:
    """The model's pixel factor from its config files when they are at hand, without loading it.

    ``model`` None is the embedded default model; ``family`` overrides what the components suggest.
    Returns (factor, why) for messages, or None when the files are not at hand.
    """
    if model is None:
        from ..defaults import SHIPPED_MODEL

        model = str(SHIPPED_MODEL)
    try:
        index = config_file(model, "model_index.json")
        vae = config_file(model, "vae/config.json")
        if index is None or vae is None:
            return None
        components = json.loads(index.read_text(encoding="utf-8"))
        blocks = json.loads(vae.read_text(encoding="utf-8")).get("block_out_channels")
        if not blocks:
            return None
        factor = 2 ** (len(blocks) - 1)
        patched = "transformer" in components if family is None else family in PATCHED_FAMILIES
        if patched:
            factor *= 2  # DiT patch size 2
        return factor, "this model's pixel factor"
    except (OSError, ValueError, AttributeError, TypeError):
        return None

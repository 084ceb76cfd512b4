"""What a model's config files say before it is loaded: its pixel factor, its pipeline layout, and
whether a local folder holds every component its ``model_index.json`` lists.

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


# ------------------------------------------------------------------------------------------ folders

#: what every "not a (complete) diffusers folder" message ends with
FOLDER_LAYOUT = (
    "a diffusers pipeline folder holds model_index.json, naming the pipeline class (_class_name) and its "
    "components, and one subfolder per component with its config and weights (e.g. unet/config.json and "
    "unet/diffusion_pytorch_model.safetensors)"
)

#: weight files diffusers and transformers load from a component folder (also sharded, also variants)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _component_kind(class_name: str) -> str:
    """scheduler, tokenizer, processor (feature extractors, image processors) or model, from the class name."""
    if class_name.endswith("Scheduler"):
        return "scheduler"
    if "Tokenizer" in class_name:
        return "tokenizer"
    if class_name.endswith(("Processor", "FeatureExtractor")):
        return "processor"
    return "model"


def read_model_index(folder: str | Path) -> dict:
    """The parsed ``model_index.json`` of a local pipeline folder; every problem is a ModelLoadError."""
    from ..errors import ModelLoadError

    folder = Path(folder)
    index = folder / "model_index.json"
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"model {folder} is a file, not a diffusers pipeline folder; {FOLDER_LAYOUT}")
    if not index.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers pipeline folder (no model_index.json); {FOLDER_LAYOUT}")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{index} is not UTF-8 JSON ({e.reason} at byte {e.start}); {FOLDER_LAYOUT}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); "
                             f"{FOLDER_LAYOUT}") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {index}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{index} holds a JSON {type(data).__name__}, not an object; {FOLDER_LAYOUT}")
    name = data.get("_class_name")
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{index} names no pipeline class (_class_name); {FOLDER_LAYOUT}")
    return data


def pipeline_components(data: dict) -> dict[str, tuple[str, str]]:
    """component name -> (library, class) of a model_index.json, without the absent ones ([null, null])."""
    out = {}
    for key, value in data.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue  # metadata and config values (e.g. "requires_safety_checker": false)
        library, cls = value
        if isinstance(library, str) and isinstance(cls, str):
            out[key] = (library, cls)
    return out


def check_pipeline_folder(folder: str | Path) -> dict:
    """Check a local pipeline folder against its ``model_index.json`` before anything is loaded.

    Every component it lists must be a subfolder with its config (``config.json``, a scheduler's
    ``scheduler_config.json``, a processor's ``preprocessor_config.json``, a tokenizer's files) and,
    for networks, a weights file. Raises one :class:`~anysize.errors.ModelLoadError` naming every
    missing piece; returns the parsed model_index.json.
    """
    from ..errors import ModelLoadError

    folder = Path(folder)
    data = read_model_index(folder)
    components = pipeline_components(data)
    if not components:
        raise ModelLoadError(f"{folder / 'model_index.json'} lists no components; {FOLDER_LAYOUT}")
    missing, problems = [], []
    for name, (_, cls) in sorted(components.items()):
        sub = folder / name
        if not sub.is_dir():
            missing.append(f"{name}/ ({cls})")
            continue
        kind = _component_kind(cls)
        files = [p.name for p in sub.iterdir() if p.is_file()]
        if kind == "tokenizer":
            if not files:
                problems.append(f"{name}/ ({cls}) has no tokenizer files")
            continue
        config = {"scheduler": "scheduler_config.json", "processor": "preprocessor_config.json"}.get(kind, "config.json")
        if config not in files:
            problems.append(f"{name}/ ({cls}) has no {config}")
        if kind == "model" and not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            problems.append(f"{name}/ ({cls}) has no weights (*.safetensors or *.bin)")
    if missing or problems:
        parts = []
        if missing:
            parts.append(f"missing component folder{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        parts += problems
        raise ModelLoadError(
            f"model folder {folder} is incomplete: {'; '.join(parts)}; its model_index.json lists "
            f"{', '.join(sorted(components))}, and {FOLDER_LAYOUT}"
        )
    return data

"""Model adapters: one per family, chosen from the loaded pipeline's components."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import InvalidArgumentError, ModelLoadError, UnknownChoiceError, check_choice
from ..lazy import lazy_module
from .base import Conditioning, ModelAdapter, PromptEmbeds, Window
from .config_files import check_pipeline_folder, config_file, pipeline_components
from .runtime import SDPA_BACKENDS, Runtime, check_compile, check_sdpa
from .dit import FluxAdapter, SD3Adapter
from .sd import SD2Adapter, SDAdapter, SDX4UpscalerAdapter
from .sdxl import SDXLAdapter

torch = lazy_module("torch")


class _NoTorchvisionFallbackNotice(logging.Filter):
    """transformers >= 5 warns, on every load of a pipeline that lists an image processor, that the
    processor falls back to its PIL backend without torchvision. anysize never runs those processors
    (safety-checker and IP-adapter inputs), so the notice only buries the run's own output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())


@contextlib.contextmanager
def _quiet_component_bars():
    """No "Loading pipeline components" / "Loading weights" bars of diffusers and transformers while a
    pipeline loads (a run shows one bar of its own). The hub's download bars stay as they were:
    transformers' switch also turns those off and on, so their state is put back each time."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    def keep_hub_bars(disabled: bool) -> None:
        if hub_utils.are_progress_bars_disabled() != disabled:
            (hub_utils.disable_progress_bars if disabled else hub_utils.enable_progress_bars)()

    hub_off = hub_utils.are_progress_bars_disabled()
    were = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    keep_hub_bars(hub_off)  # a download still shows its bar
    try:
        yield
    finally:
        if were[0]:
            diffusers_logging.enable_progress_bar()
        if were[1]:
            transformers_logging.enable_progress_bar()
        keep_hub_bars(hub_off)

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "sd1": SDAdapter,
    "sd2": SD2Adapter,
    "sdxl": SDXLAdapter,
    "sd3": SD3Adapter,
    "flux": FluxAdapter,
    "sd-x4-upscaler": SDX4UpscalerAdapter,
}
FAMILIES = tuple(ADAPTERS)

#: dtype name -> the name of the torch dtype (resolved when a model loads: listing them needs no torch)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
OFFLOADS = ("none", "model", "sequential")


def detect_family(pipe) -> str:
    """The family of a diffusers pipeline, from its components (works for fine-tunes and forks)."""
    comps = getattr(pipe, "components", {})
    transformer = comps.get("transformer")
    if transformer is not None:
        name = type(transformer).__name__
        if name.startswith("SD3Transformer"):
            return "sd3"
        if name.startswith("FluxTransformer"):
            return "flux"
        raise ModelLoadError(f"unsupported transformer {name}; supported families: {', '.join(FAMILIES)}")
    unet = comps.get("unet")
    if unet is not None and comps.get("low_res_scheduler") is not None and unet.config.get("in_channels") == 7:
        return "sd-x4-upscaler"  # the StableDiffusionUpscalePipeline layout: latents + low-res RGB in
    if unet is not None and type(unet).__name__ == "UNet2DConditionModel":
        if unet.config.get("addition_embed_type") == "text_time" and comps.get("text_encoder_2") is not None:
            return "sdxl"
        if comps.get("text_encoder") is not None:
            # SD 2.x switched the transformer blocks to linear projections (and OpenCLIP); 1.x did not
            return "sd2" if unet.config.get("use_linear_projection") else "sd1"
    raise ModelLoadError(
        f"{type(pipe).__name__} is not a text-to-image pipeline of a supported family ({', '.join(FAMILIES)})"
    )


class FamilyMismatchError(ModelLoadError):
    """A family override whose pipeline layout is not the loaded pipeline's (``family="sdxl"`` for an
    SD 1.5 folder): an override can tell SD 1.x from 2.x, never one layout from another."""

    def __init__(self, family: str, detected: str, pipeline: str):
        self.family, self.detected, self.pipeline = family, detected, pipeline
        super().__init__(self._message(f"family={family!r}", "leave family out"))

    def _message(self, given: str, way_out: str) -> str:
        return (f"{given} does not fit this model: its components are those of a {self.detected} pipeline "
                f"({self.pipeline}); {way_out} to detect it")

    def for_cli(self) -> str:
        return self._message(f"--family {self.family}", "leave --family out")


def adapt(pipe, *, family: str | None = None, native_size=None) -> ModelAdapter:
    """Wrap an already loaded diffusers pipeline in the adapter of its family (``family`` overrides
    the detected one within a pipeline layout; across layouts it is a :class:`FamilyMismatchError`).

    ``native_size`` overrides the model's native size, in *latent* pixels (an int or (h, w); e.g.
    16 for a 128-px model with VAE factor 8); the adapter's ``native_size`` property reads it back in
    image pixels and ``native_latent_size`` in latent pixels."""
    if isinstance(pipe, ModelAdapter):
        return pipe
    if family is None:
        family = detect_family(pipe)
    else:
        check_choice("family", family, FAMILIES)
        _check_family_fits(pipe, family)
    return ADAPTERS[family](pipe, native_size=native_size)


def _check_family_fits(pipe, family: str) -> None:
    from .config_files import LAYOUTS

    try:
        detected = detect_family(pipe)
    except ModelLoadError:
        return  # detection failed: the override is what the user knows
    if LAYOUTS[detected] != LAYOUTS[family]:
        raise FamilyMismatchError(family, detected, type(pipe).__name__)


def check_device(device, cpu_hint: str = "device='cpu'") -> None:
    """Refuse a device torch cannot parse or does not have, before any weights load
    (``cpu_hint``: how this front end spells the way out)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidArgumentError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} is not available (no CUDA GPU visible to torch); use {cpu_hint}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidArgumentError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvalidArgumentError(f"device {device!r} is not available; use {cpu_hint}")


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, DTYPES[check_choice("dtype", dtype, DTYPES)])


def load(
    model: str | os.PathLike,
    *,
    family: str | None = None,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device | None = None,
    offload: str = "none",
    native_size=None,
    variant: str | None = None,
    local_files_only: bool | None = None,
    compile: bool = False,
    sdpa: str = "auto",
) -> ModelAdapter:
    """Load a diffusers pipeline from a hub id or a local folder and wrap it in its adapter.

    ``offload`` is "none", "model" (whole components move to the GPU when used) or "sequential"
    (layer by layer: slowest, least memory). ``compile`` and ``sdpa`` are the adapter's runtime
    settings (:meth:`ModelAdapter.set_runtime`): ``torch.compile`` of the denoiser, compiled once
    per input shape on its first call; the attention kernel, one of ``auto, flash, efficient,
    cudnn, math``.
    """
    if isinstance(model, bool) or not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
        raise InvalidArgumentError(f"model must be a hub id or the path of a diffusers pipeline folder, got {model!r}")
    torch_dtype = resolve_dtype(dtype)
    check_choice("offload", offload, OFFLOADS)
    check_compile(compile)
    check_sdpa(sdpa)  # both before any weights load; whether the kernel runs is checked after
    if compile and offload != "none":
        raise InvalidArgumentError(f"compile needs the weights on the device for the whole run; use offload='none', "
                                   f"not {offload!r}")
    if family is not None:
        check_choice("family", family, FAMILIES)
    if device is not None:
        check_device(device)
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    looks_local = path.exists() or str(model).startswith((".", "/", "~"))
    if looks_local:
        check_loadable_folder(path)
        local_files_only = True
    else:
        _check_reachable(str(model), local_files_only)
    try:
        with _quiet_component_bars():
            pipe = DiffusionPipeline.from_pretrained(
                str(path) if looks_local else str(model), torch_dtype=torch_dtype, variant=variant,
                local_files_only=bool(local_files_only),
            )
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"cannot load {model!s} as a diffusers pipeline: {e}") from e
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    adapter = adapt(pipe, family=family, native_size=native_size)
    adapter.source = str(model)
    if looks_local:
        _apply_folder_defaults(adapter, path / MODEL_DEFAULTS_FILE)
    if compile or sdpa != "auto":
        adapter.set_runtime(compile=compile, sdpa=sdpa)
    return adapter


def check_loadable_folder(folder: Path) -> None:
    """A local folder must hold every component its model_index.json lists
    (:func:`~anysize.models.config_files.check_pipeline_folder`), and name classes this diffusers
    and transformers have: one clear ModelLoadError before ``from_pretrained`` (whose own message
    for a missing component is "no file named config.json found in directory <the folder>")."""
    import diffusers
    import transformers

    data = check_pipeline_folder(folder)
    index = folder / "model_index.json"
    name = data["_class_name"]
    if getattr(diffusers, name, None) is None:
        raise ModelLoadError(
            f"{index} names pipeline class {name!r}, which diffusers {diffusers.__version__} does not have "
            "(a typo, or a newer diffusers); text-to-image pipelines of the supported families are e.g. "
            "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline"
        )
    libraries = {"diffusers": diffusers, "transformers": transformers}
    unknown = [f"{component}: {library}.{cls}" for component, (library, cls) in sorted(pipeline_components(data).items())
               if library in libraries and getattr(libraries[library], cls, None) is None]
    if unknown:
        raise ModelLoadError(f"{index} names component classes this installation does not have ({', '.join(unknown)}; "
                             f"diffusers {diffusers.__version__}, transformers {transformers.__version__})")


def _check_reachable(model: str, local_files_only: bool | None) -> None:
    """A hub id with downloads off must already be in the local cache; say so instead of diffusers'
    "not fully cached ... see the stacktrace above"."""
    from huggingface_hub import constants

    if not (local_files_only or constants.HF_HUB_OFFLINE):
        return
    if config_file(model, "model_index.json") is None:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise ModelLoadError(
            f"model {model!r} is neither a local folder nor a pipeline in the local Hugging Face cache, and "
            f"downloads are off ({why}); give the path of a diffusers pipeline folder, or download the model first"
        )


#: optional file in a model folder with anysize's defaults for it, e.g. {"default_steps": 20}
MODEL_DEFAULTS_FILE = "anysize.json"
_DEFAULT_KEYS = {"default_steps": int, "default_guidance": float}


def _apply_folder_defaults(adapter: ModelAdapter, file: Path) -> None:
    """Sampling defaults a model folder declares for itself (the toy model samples well in 20 steps,
    not SD's 50); unknown keys are ignored, wrong types are an error naming the file."""
    if not file.is_file():
        return
    import json

    try:
        values = json.loads(file.read_text(encoding="utf-8"))
        for key, kind in _DEFAULT_KEYS.items():
            if key in values:
                setattr(adapter, key, kind(values[key]))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"cannot read the model defaults in {file}: {e}") from None


__all__ = [
    "ADAPTERS", "FAMILIES", "DTYPES", "OFFLOADS", "SDPA_BACKENDS", "Conditioning", "FamilyMismatchError", "ModelAdapter", "PromptEmbeds",
    "Runtime", "Window", "adapt", "check_device", "detect_family", "load", "resolve_dtype", "UnknownChoiceError",
]

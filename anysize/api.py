"""The Python front end: validate, fill defaults, run a method, return images with their config.

    import anysize
    model = anysize.load("stabilityai/stable-diffusion-xl-base-1.0", dtype="fp16", device="cuda")
    result = anysize.generate(model, "a castle", width=4096, height=2048, method="direct", seed=0)
    result.save("castle.png")          # PNG with A1111 `parameters` and full JSON config

    with anysize.patch(pipe, "hidiffusion"):   # a network patch around a stock pipeline or an adapter
        image = pipe("a castle", height=2048, width=2048).images[0]

No math lives here.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from . import methods as _methods
from .errors import (
    AnysizeError, InvalidArgumentError, InvalidSizeError, OutOfMemoryError, UnknownChoiceError, check_choice,
)
from .images import load_image  # noqa: F401  (anysize.api.load_image: part of the API)
from .lora import LoraFile, check_loras
from .models import ModelAdapter, adapt
from .models import load as _load_model
from .models import control as _control
from .models.base import Conditioning, as_list
from .models.control import Control  # noqa: F401  (anysize.Control: part of the API)
from .options import require
from .progress import run_progress
from .prompts import check_prompt
from .request import Request
from .sampling import StepCallback, check_strength, current_step, make_generators, partial_schedule
from .schedulers import make_scheduler, scheduler_name
from .seeds import MAX_SEED  # noqa: F401  (anysize.api.MAX_SEED: part of the API)


def patch(target, name: str, **options: Any):
    """A context manager that patches the network of ``target`` (a diffusers pipeline or an
    anysize adapter) with patch ``name`` (one of :data:`anysize.patches.PATCHES`) while it is open.

    ``"hidiffusion"`` is RAU-Net + MSW-MSA; ``"raunet"`` and ``"msw_msa"`` are either half; options
    are the fields of :class:`~anysize.patches.hidiffusion.HiDiffusionSettings` plus ``seed``.
    ``"npa"`` is ScaleDiff's Neighborhood Patch Attention (U-Nets, SD3, FLUX), options the fields of
    :class:`~anysize.patches.npa.NPASettings` plus ``seed``. A stock pipeline is adapted once and
    its denoising loop followed by a :class:`~anysize.patches.steps.PipelineStepTracker`; an
    adapter's patch follows anysize's own sampling loop (:func:`anysize.sampling.current_step`).
    Bad names, options or models raise :class:`~anysize.errors.InvalidArgumentError` (an unknown
    name :class:`~anysize.errors.UnknownChoiceError`) before anything is changed.
    """
    from .patches import PATCHES, PipelineStepTracker

    if name not in PATCHES:
        raise UnknownChoiceError("patch", name, PATCHES)
    if isinstance(target, ModelAdapter):
        adapter, position = target, current_step
    elif hasattr(target, "components") and callable(target):
        try:
            adapter = adapt(target)
        except AnysizeError as e:
            raise InvalidArgumentError(f"{name} cannot patch {type(target).__name__}: {e}") from None
        position = PipelineStepTracker(target, adapter.network)
    else:
        raise InvalidArgumentError(
            f"anysize.patch needs a diffusers pipeline or an anysize model adapter, got {type(target).__name__}"
        )
    return PATCHES[name](adapter, position, **options)


def load(model: str | os.PathLike | None = None, **kwargs) -> ModelAdapter:
    """Load a pipeline (hub id or local folder) into its family adapter. See :func:`anysize.models.load`."""
    if model is None:
        from .defaults import default_model_path

        model = default_model_path()
    return _load_model(model, **kwargs)


@dataclass
class ImageResult:
    """One image of a :class:`GenerationResult` with its own parameters (its prompt and seed)."""

    image: Any
    config: dict[str, Any]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def prompt(self) -> str:
        return self.config["prompt"]

    def save(self, path: str | os.PathLike, *, force: bool = False):
        """Write the image as PNG with its generation parameters, atomically."""
        from .output import save_png

        return save_png(self.image, path, self.config, force=force)


@dataclass
class GenerationResult:
    """The images of one call (``result[i]``, ``len(result)``, ``for one in result``: one
    :class:`ImageResult` per prompt, each with its own prompt, seed and ``save``)."""

    images: list
    latents: torch.Tensor
    config: dict[str, Any]
    seconds: float
    network_calls: int

    @property
    def image(self):
        return self.images[0]

    def __len__(self) -> int:
        return len(self.config["prompts"])

    def __getitem__(self, index: int) -> ImageResult:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"a GenerationResult is indexed by an integer, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"image {index} of a result with {n} image{'s' if n != 1 else ''}")
        index %= n
        return ImageResult(self.images[index], self.config_for(index))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def save(self, path: str | os.PathLike, *, index: int = 0, force: bool = False):
        """Write image ``index`` as PNG with its generation parameters, atomically."""
        from .output import save_png

        return save_png(self.images[index], path, self.config_for(index), force=force)

    def config_for(self, index: int) -> dict[str, Any]:
        cfg = dict(self.config)
        cfg["prompt"] = self.config["prompts"][index]
        cfg["negative_prompt"] = (self.config["negative_prompts"] or [""])[index] if self.config["negative_prompts"] else ""
        cfg["seed"] = self.config["seeds"][index]
        return cfg


def _check_fits(adapter: ModelAdapter, height: int, width: int, batch: int) -> None:
    """Refuse sizes whose decoded image alone cannot fit in the device's memory."""
    device = torch.device(adapter.device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        where = f"GPU memory ({total / 2**30:.0f} GiB)"
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
        where = f"RAM ({total / 2**30:.0f} GiB)"
    # the float image on the device, plus its uint8 copy on the host; the latent canvas is 1/f^2 of it
    need = batch * height * width * (3 * 4 + 3)
    if need > total:
        side = int((total / (batch * 15)) ** 0.5) // adapter.size_multiple * adapter.size_multiple
        raise InvalidSizeError(
            f"{width}x{height} needs at least {need / 2**30:.1f} GiB for the decoded image alone, more than the "
            f"{where}; the largest square that could fit is about {side}x{side}"
        )


def generate(
    model,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    width: int | None = None,
    height: int | None = None,
    method: str | _methods.Method = "direct",
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | Sequence[int] = 0,
    scheduler: str | None = None,
    tiled_vae: bool | str = "auto",
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    output_type: str = "pil",
    method_options: dict[str, Any] | None = None,
    lora=None,
    regions: Sequence[Any] | None = None,
    control: Control | Sequence[Control] | None = None,
    control_guess_mode: bool = False,
) -> GenerationResult:
    """Generate one image per prompt at any size with a registered method.

    ``model`` is an adapter from :func:`load` or a diffusers pipeline. ``method`` is a registered
    name (with ``method_options``) or a method object, which may serve several calls, also from
    several threads at once. ``width``/``height`` default to the model's native size and must be
    multiples of its pixel factor. ``seed`` is one integer in [0, :data:`MAX_SEED`] (image i uses
    seed + i) or one per prompt; negative seeds are refused, as on the command line (torch would
    take them but record their unsigned 64-bit twin, so the saved seed would not be the one given).
    An empty prompt (``""``) generates without text, as diffusers does. ``callback(StepInfo)`` runs
    after every step and may return False to cancel, as may setting ``cancel`` (a
    ``threading.Event``). ``lora`` is a LoRA for the whole run, with any method: a path (a file or
    folder diffusers' ``load_lora_weights`` reads), a ``(path, scale)`` pair, a
    :class:`~anysize.lora.Lora`, a record of the metadata's ``loras`` list, or a list of them; they
    are loaded through diffusers, active for the run and removed after it, even on error or
    cancel, leaving the network bit-identical (:mod:`anysize.models.lora`); the config's ``loras``
    records each one's path, weights file, SHA-256 and scale. Every argument is checked (type and
    range) before any work: a wrong one raises :class:`~anysize.errors.InvalidArgumentError` (a size :class:`~anysize.errors.InvalidSizeError`,
    a name that is not one of the choices :class:`~anysize.errors.UnknownChoiceError`) naming it.

    ``regions`` (the window methods: multidiffusion, fstd) is a list of :class:`anysize.regions.Region`
    (or their dicts): parts of the canvas with their own prompts; each image's own prompt is then the
    background prompt (see :mod:`anysize.regions`). They are recorded in the config (``regions``).

    ``control``: one :class:`Control` or a list (several ControlNets add their residuals); every
    network call of every method gets the control image resized to its canvas and cut to the
    region it sees (see :mod:`anysize.models.control`). ``control_guess_mode`` is diffusers'
    ``guess_mode``.
    """
    adapter = _adapter(model)
    if getattr(adapter, "needs_image", False):
        raise InvalidArgumentError(
            f"the {adapter.family} model enlarges images and cannot generate from text alone; use "
            "anysize.upscale(model, image, ...) or 'anysize upscale IMAGE'"
        )
    prompts, negative = _prompts(prompt, negative_prompt)

    nh, nw = adapter.native_size
    height = nh if height is None else height
    width = nw if width is None else width
    adapter.check_size(height, width)
    _check_fits(adapter, height, width, len(prompts))

    m = _method(method, method_options)
    if regions is not None:
        from . import regions as _regions

        _regions.check_method(m)
        regions = _regions.check_regions(regions, width, height)
    settings = _settings(adapter, len(prompts), steps, guidance, seed, scheduler, tiled_vae, output_type, callback,
                         cancel, progress)
    _check_guidance(m, settings)
    m.check(adapter, height, width, settings.steps)
    loras = check_loras(lora)  # before the controls: a ControlNet named by path is loaded there
    controls = _controls(adapter, control, control_guess_mode)

    def work():
        # one bar for the call: every sampling loop and tiled VAE pass of the method counts in it
        with torch.no_grad(), _network_for(adapter, loras), run_progress(m.name, progress):
            request = _request(adapter, prompts, negative, height, width, settings, callback, cancel, progress, controls)
            if regions is not None:
                plan = _regions.plan(adapter, regions, prompts, negative, request.cond, width, height, request.seeds)
                request.cond = dataclasses.replace(request.cond, regions=plan)
            latents = m.run(request)
            return request, latents, _finish(adapter, latents, settings, progress, wrap=m.wraps)

    start = time.perf_counter()
    calls0 = adapter.calls
    what = f"generating {len(prompts)} {width}x{height} image{'s' if len(prompts) > 1 else ''} with {m.name}"
    request, latents, images = _within_memory(adapter, what, lambda: _memory_tips(adapter, m, settings, len(prompts)), work)
    seconds = time.perf_counter() - start
    config = _config(adapter, request, m, settings, loras, controls)
    if regions is not None:
        config["regions"] = [r.to_dict() for r in regions]
    return GenerationResult(images, latents, config, seconds, adapter.calls - calls0)


#: PIL filter used to resize the input image of :func:`upscale` to the target size (as the official
#: ASD upscaler, which resizes with bicubic interpolation)
UPSCALE_RESAMPLE = "bicubic"


def upscale_size(
    source_hw: tuple[int, int], multiple: int, *, scale: float | None = None, size: tuple[int, int] | None = None,
) -> tuple[int, int, bool]:
    """(height, width, rounded) of an upscale target.

    Exactly one of ``scale`` (> 0; each side is ``round(side * scale)``, then rounded to the nearest
    multiple of ``multiple``, at least one multiple: ``rounded`` says whether that changed it) or
    ``size`` ((width, height), which must already be multiples) is given.
    """
    if (scale is None) == (size is None):
        raise InvalidArgumentError("give exactly one of scale or size")
    if size is not None:
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
            raise InvalidSizeError(f"size must be a (width, height) pair of integers, got {size!r}")
        width, height = size
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidSizeError(f"target {name} must be a positive integer, got {v!r}")
        return height, width, False
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or scale == float("inf"):
        raise InvalidArgumentError(f"scale must be a number > 0, got {scale!r}")
    exact = [round(v * scale) for v in source_hw]
    snapped = [max(multiple, int(multiple * round(v / multiple))) for v in exact]
    return snapped[0], snapped[1], snapped != exact


def image_to_tensor(image, height: int, width: int) -> torch.Tensor:
    """An RGB PIL image resized (bicubic) to height×width, as a (1, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    # in place: one float copy of a possibly huge image, same arithmetic as diffusers' preprocess
    return arr.permute(2, 0, 1).unsqueeze(0).float().div_(255.0).mul_(2.0).sub_(1.0)


def upscale(
    model,
    image,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    method: str | _methods.Method = "fstd",
    strength: float | None = None,
    noise_level: int | None = None,
    prompt: str = "",
    negative_prompt: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    scheduler: str | None = None,
    tiled_vae: bool | str = "auto",
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    output_type: str = "pil",
    method_options: dict[str, Any] | None = None,
    lora=None,
    control: Control | Sequence[Control] | None = None,
    control_guess_mode: bool = False,
    regions: Sequence[Any] | None = None,
) -> GenerationResult:
    """Enlarge ``image`` (a PIL image or a file path) SDEdit-style with a registered method.

    The image is read as 8-bit RGB by :func:`anysize.images.load_image`: EXIF orientation applied,
    16-bit and [0, 1]-float images scaled, palettes expanded, alpha composited over white, modes
    without a defined conversion refused (see :mod:`anysize.images`).

    The image is resized (bicubic) to the target, ``scale`` × its size (sides rounded to the
    model's pixel factor; the config's ``upscale.rounded`` says when that moved them) or ``size``
    = (width, height); encoded with the model's VAE (tiled above 2048² px with ``tiled_vae="auto"``);
    re-noised to ``strength`` (in (0, 1]: the fraction of the ``steps``-step schedule that is run)
    and denoised by the method (e.g. ``fstd`` or ``multidiffusion`` tiles at the model's native size);
    then decoded (tiled likewise). ``prompt`` is best generic ("high quality, detailed"): the object
    words of a prompt tend to appear in every tile. ``strength`` defaults to 0.4; ``guidance`` to
    the model's, or to 1 (no classifier-free guidance) when there is neither prompt nor negative.

    With an image-conditioned upscaler (``StableDiffusionUpscalePipeline``, family
    ``sd-x4-upscaler``) the image is instead resized (bicubic) to a quarter of the target, noised
    once to ``noise_level`` (default 20, the stock pipeline's) and concatenated, crop by crop, to
    every window the method runs; ``strength`` then defaults to 1 (from pure noise, like the stock
    pipeline); below 1 the bicubic target-size image, encoded, is the starting point.

    ``lora``: LoRAs active for the whole run, as in :func:`generate`.
    ``control`` as in :func:`generate`; a :class:`Control` without an image takes the source image
    (a tile ControlNet for faithful upscaling: every tile gets its crop of the resized source).
    ``regions`` as in :func:`generate`, in pixels of the enlarged image: the window methods give
    each region's tiles its own prompt, ``prompt`` covering the rest (a region's ``bootstrap`` acts
    on the first share of the steps that are run).
    """
    adapter = _adapter(model)
    if isinstance(prompt, (list, tuple)) or isinstance(negative_prompt, (list, tuple)):
        raise InvalidArgumentError("upscale takes one prompt and at most one negative prompt (strings)")
    check_prompt(prompt)
    if negative_prompt is not None:
        check_prompt(negative_prompt, "negative prompt")
    m = _method(method, method_options)
    if not m.refines:
        able = [n for n in _methods.names() if _methods.get(n).refines]
        raise InvalidArgumentError(
            f"method {m.name!r} makes its own canvas in several stages and cannot upscale an image; "
            f"use one of: {', '.join(able)}"
        )
    conditioned = bool(getattr(adapter, "needs_image", False))
    strength = check_strength((1.0 if conditioned else 0.4) if strength is None else strength)
    if noise_level is not None and not conditioned:
        raise InvalidArgumentError(
            f"noise_level is an option of image-conditioned upscalers (sd-x4-upscaler), not of the {adapter.family} model"
        )
    if conditioned:
        noise_level = adapter.check_noise_level(adapter.default_noise_level if noise_level is None else noise_level)
    if guidance is None and not prompt and not negative_prompt and not m.needs_guidance:
        guidance = 1.0  # no text: guidance would only double every call (the official upscaler: empty prompt, no CFG)
    if isinstance(seed, (list, tuple)):
        raise InvalidArgumentError(f"upscale makes one image: seed must be one integer, got {seed!r}")
    settings = _settings(adapter, 1, steps, guidance, seed, scheduler, tiled_vae, output_type, callback, cancel,
                         progress)
    _check_guidance(m, settings)
    source = load_image(image)
    height, width, rounded = upscale_size((source.height, source.width), adapter.size_multiple, scale=scale, size=size)
    adapter.check_size(height, width)
    _check_fits(adapter, height, width, 1)
    m.check(adapter, height, width, settings.steps)
    if regions is not None:
        from . import regions as _regions

        _regions.check_method(m)
        if conditioned:  # its windows carry their crop of the low-res image, which the region prompts' rows lack
            raise InvalidArgumentError("regional prompts are not supported with image-conditioned upscalers (sd-x4-upscaler)")
        regions = _regions.check_regions(regions, width, height)
    f = adapter.vae_factor
    # refuses a strength that runs no step, before the (possibly long) encode
    partial_schedule(adapter, make_scheduler(adapter, scheduler), settings.steps, strength, (height // f, width // f))
    loras = check_loras(lora)  # before the controls: a ControlNet named by path is loaded there
    controls = _controls(adapter, control, control_guess_mode, source_image=source)

    def work():
        # one bar for the call: every sampling loop and tiled VAE pass of the method counts in it
        with torch.no_grad(), _network_for(adapter, loras), run_progress(m.name, progress):
            request = _request(adapter, [prompt], None if negative_prompt is None else [negative_prompt], height, width,
                               settings, callback, cancel, progress, controls)
            if regions is not None:
                plan = _regions.plan(adapter, regions, [prompt], None if negative_prompt is None else [negative_prompt],
                                     request.cond, width, height, request.seeds)
                request.cond = dataclasses.replace(request.cond, regions=plan)
            if conditioned:  # the low-res image, noised once, conditions every window (drawn first, as the pipeline does)
                low_res = image_to_tensor(source, height // f, width // f)
                request.cond = adapter.condition_on_image(request.cond, low_res, noise_level, request.generators)
            if conditioned and strength == 1.0:
                latents = m.run(request)  # from pure noise, exactly as the stock pipeline
            else:
                pixels = image_to_tensor(source, height, width)
                tiled, kw = _vae_tiling(tiled_vae)
                # the posterior sample draws from the image's generator first, as the diffusers img2img pipelines do
                clean = adapter.encode(pixels, generator=request.generators[0], tiled=tiled, progress=progress, **kw)
                del pixels
                latents = m.refine(request, clean, strength)
            return request, latents, _finish(adapter, latents, settings, progress, wrap=m.wraps)

    start = time.perf_counter()
    calls0 = adapter.calls
    what = f"upscaling to {width}x{height} with {m.name}"
    request, latents, images = _within_memory(adapter, what, lambda: _memory_tips(adapter, m, settings, 1), work)
    seconds = time.perf_counter() - start
    config = _config(adapter, request, m, settings, loras, controls)
    name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else getattr(image, "filename", "") or ""
    config["strength"] = strength
    config["upscale"] = {
        "source": os.path.basename(name),
        "source_size": [source.width, source.height],
        "scale": scale,
        "size": [width, height],
        "rounded": rounded,
        "resample": UPSCALE_RESAMPLE,
        "strength": strength,
    }
    if conditioned:
        config["upscale"]["noise_level"] = noise_level
    if regions is not None:
        config["regions"] = [r.to_dict() for r in regions]
    return GenerationResult(images, latents, config, seconds, adapter.calls - calls0)


# ------------------------------------------------------------------------------------------ shared steps


@dataclass
class _Settings:
    """Validated sampling settings shared by :func:`generate` and :func:`upscale`."""

    steps: int
    guidance: float
    seed: int | Sequence[int]
    scheduler: str | None
    scheduler_label: str
    tiled_vae: bool | str
    output_type: str


def _adapter(model) -> ModelAdapter:
    if isinstance(model, (str, os.PathLike)):  # a model id or folder: loading is a call of its own
        raise InvalidArgumentError(
            f"model must be a loaded model (anysize.load(...)) or a diffusers pipeline, got the path {os.fspath(model)!r}; "
            f"load it once first: model = anysize.load({os.fspath(model)!r})"
        )
    return adapt(model)


def _method(method, options) -> _methods.Method:
    if options is not None and not (isinstance(options, Mapping) and all(isinstance(k, str) for k in options)):
        raise InvalidArgumentError(
            f"method_options must be a dict of option names to values, e.g. {{'tile': 64}}, got {options!r}"
        )
    if isinstance(method, _methods.Method):
        if options:
            raise InvalidArgumentError("method_options go with a method name; a method object carries its own options")
        return method
    if isinstance(method, type) and issubclass(method, _methods.Method):
        raise InvalidArgumentError(
            f"method must be a method name or a method object, got the class {method.__name__}; pass "
            f"{method.__name__}(...) or its name {method.name!r}"
        )
    if not isinstance(method, str):
        raise InvalidArgumentError(
            f"method must be a method name ({', '.join(_methods.names())}) or a method object, "
            f"got {type(method).__name__} {method!r}"
        )
    return _methods.create(method, **(options or {}))


def _prompts(prompt, negative_prompt) -> tuple[list[str], list[str] | None]:
    prompts = as_list(prompt)
    if prompts is None:
        raise InvalidArgumentError("no prompt given")
    negative = as_list(negative_prompt, "negative prompt")
    if negative is not None and len(negative) == 1 and len(prompts) > 1:
        negative = negative * len(prompts)
    if negative is not None and len(negative) != len(prompts):
        raise InvalidArgumentError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
    return prompts, negative


#: the ``tiled_vae`` values of :func:`generate` and :func:`upscale`
TILED_VAE = (True, False, "auto", "fast")

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_seed(seed, count: int = 1, name: str = "seed") -> int:
    """``seed`` if it is an integer in [0, :data:`MAX_SEED`] and so is ``seed + count - 1`` (image i
    of ``count`` uses seed + i); an :class:`~anysize.errors.InvalidArgumentError` naming ``name`` otherwise."""
    require(name, seed, kind="int", low=0, high=MAX_SEED)
    if seed + count - 1 > MAX_SEED:
        raise InvalidArgumentError(
            f"{name} {seed} gives image {count} of {count} the seed {seed + count - 1}, beyond {MAX_SEED}; "
            f"use a {name} <= {MAX_SEED - count + 1}"
        )
    return seed


def _settings(adapter, batch, steps, guidance, seed, scheduler, tiled_vae, output_type, callback=None, cancel=None,
              progress=True) -> _Settings:
    """Every sampling argument of :func:`generate` and :func:`upscale`, checked (type and range)
    before any work; the one place the API validates them."""
    steps = adapter.default_steps if steps is None else require("steps", steps, kind="int", low=1)
    guidance = adapter.default_guidance if guidance is None else float(require("guidance", guidance, kind="float", low=0))
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise InvalidArgumentError(f"{len(seed)} seeds for {batch} prompts")
        for i, s in enumerate(seed):
            check_seed(s, name=f"seed {i + 1} of {batch}")
    else:
        check_seed(seed, batch)
    if not (isinstance(tiled_vae, bool) or tiled_vae in ("auto", "fast")):
        raise InvalidArgumentError(f"tiled_vae must be True, False, 'auto' or 'fast', got {tiled_vae!r}")
    check_choice("output_type", output_type, OUTPUT_TYPES)
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(
            f"callback must be a function called with a StepInfo after every step (or None), got {type(callback).__name__}"
        )
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InvalidArgumentError(
            f"cancel must be a threading.Event (anything with is_set()) or None, got {type(cancel).__name__} {cancel!r}"
        )
    if not isinstance(progress, bool):
        raise InvalidArgumentError(f"progress must be True or False, got {progress!r}")
    label = scheduler_name(make_scheduler(adapter, scheduler))  # validates before any work
    return _Settings(steps, guidance, seed, scheduler, label, tiled_vae, output_type)


def load_controls(adapter, controls):
    """``controls`` with every ControlNet named by a path or hub id loaded for ``adapter`` (once per
    name), so that a front end generating several images loads each one once."""
    loaded: dict[str, Any] = {}
    out = []
    for c in ([controls] if isinstance(controls, Control) else list(controls or [])):
        if isinstance(c, Control) and isinstance(c.model, (str, os.PathLike)):
            key = os.fspath(c.model)
            if key not in loaded:
                classes = _control.CLASSES.get(adapter.family)
                if classes is None:
                    raise InvalidArgumentError(
                        f"ControlNet works with the {', '.join(_control.CLASSES)} families, not with the {adapter.family} model")
                loaded[key] = _control.load_controlnet(key, classes, adapter)
            c = dataclasses.replace(c, model=loaded[key])
        out.append(c)
    return out


def _controls(adapter, control, guess_mode, *, source_image=None):
    """The run's ControlNets checked and loaded (None without any), before any work."""
    if not isinstance(guess_mode, bool):
        raise InvalidArgumentError(f"control_guess_mode must be True or False, got {guess_mode!r}")
    items = _control.check(adapter, control, source_image=source_image)
    return _control.prepare(adapter, items, guess_mode=guess_mode)


def _check_guidance(m, s: _Settings) -> None:
    """Refuse, before any work, guidance <= 1 for a method that needs classifier-free guidance."""
    if m.needs_guidance and s.guidance <= 1:
        raise InvalidArgumentError(
            f"method {m.name!r} needs classifier-free guidance: give guidance > 1 (got {s.guidance:g}; the model's "
            "default is used when none is given)")


def _request(adapter, prompts, negative, height, width, s: _Settings, callback, cancel, progress,
             controls=None) -> Request:
    generators = make_generators(s.seed, len(prompts))
    seeds = [g.initial_seed() for g in generators]
    cond = _control.attach(adapter.encode_prompt(prompts, negative, guidance_scale=s.guidance), controls)
    return Request(
        adapter, prompts, negative, height, width, s.steps, s.guidance, seeds, s.scheduler, cond, generators,
        callback, cancel, progress,
    )


#: method options that set how many windows (views, tiles, patches) go into one network call
WINDOW_BATCH_OPTIONS = ("view_batch_size", "tile_batch_size")


def _memory_tips(adapter, m, s: _Settings, batch: int) -> list[tuple[str, str, str]]:
    """The ways out of an out-of-memory error that this run has not taken yet, as (Python, CLI, web UI)."""
    tips = []
    if batch > 1:
        tips.append(("fewer prompts per call", "--batch 1", "fewer images at once"))
    options = m.options.as_dict() if getattr(m, "options", None) is not None else {}
    for key in WINDOW_BATCH_OPTIONS:  # fewer windows per network call: the same image, a smaller working set
        if isinstance(options.get(key), int) and options[key] > 1:
            tips.append((f"method_options={{'{key}': 1}}", f"--set {key}=1", f"{m.name} option {key}: 1"))
    if adapter.dtype == torch.float32 and torch.device(adapter.device).type == "cuda":
        tips.append(("dtype='fp16' in anysize.load", "--dtype fp16", "starting the app with --dtype fp16"))
    if s.tiled_vae not in (True, "fast") and s.output_type != "latent":
        tips.append(("tiled_vae='fast'", "--tiled-vae fast", "tiled VAE: fast"))
    bounded = [n for n in _methods.names() if _methods.get(n).bounded_memory
               and (_methods.get(n).families is None or adapter.family in _methods.get(n).families)]
    if not m.bounded_memory and bounded:
        why = "(its memory is one window batch at any size)"
        tips.append((f"method='{bounded[0]}' {why}", f"--method {bounded[0]} {why}", f"method: {bounded[0]} {why}"))
    tips.append(("a smaller size", "a smaller --size", "a smaller size"))
    return tips


def _within_memory(adapter, what: str, tips, work):
    """``work()``, with the allocator's out-of-memory error turned into an :class:`OutOfMemoryError`
    that says what was asked (``what``) and the ways out (``tips()``, worked out only then), after
    the failed run's memory is given back."""
    from .devices import is_out_of_memory, release_memory

    try:
        return work()
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(e):
            raise
        # CUDA's message is one long line: what it tried to allocate and what was free are its first sentences
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        detail = ". ".join(first.split(". ")[:3])[:240]
    # outside the handler, the failed run's frames and their tensors are gone: their memory can go back
    release_memory(adapter.device)
    raise OutOfMemoryError(f"on {adapter.device} {what}", detail, tips())


def _vae_tiling(tiled_vae) -> tuple[bool | str, dict]:
    """(tiled argument, extra keywords) of the adapter's encode/decode for a ``tiled_vae`` setting."""
    if tiled_vae == "fast":  # tiled, GroupNorm statistics estimated from a small pass
        return True, {"stats": "fast"}
    return tiled_vae, {}


def _finish(adapter, latents, s: _Settings, progress: bool, wrap: bool = False):
    """Decode (tiled as asked; wrapping around for 360° panoramas) and convert to the output type."""
    if s.output_type == "latent":
        return latents
    tiled, kw = _vae_tiling(s.tiled_vae)
    decoded = adapter.decode(latents, tiled=tiled, progress=progress, wrap=wrap, **kw)
    return adapter.postprocess(decoded, output_type=s.output_type)


def _network_for(adapter: ModelAdapter, loras: Sequence[LoraFile]):
    """What a run holds around its work: its LoRAs attached (the network to itself, see
    :mod:`anysize.models.lora`), or, without LoRAs, the network's lock shared, so that no other
    run's LoRA is loaded into the network while this run uses it."""
    return adapter.loras(loras) if loras else adapter.network_lock.shared()


def _config(adapter, request: Request, m, s: _Settings, loras: Sequence[LoraFile] = (),
            controls=None) -> dict[str, Any]:
    config = {
        "prompts": request.prompts,
        "negative_prompts": request.negative,
        "width": request.width,
        "height": request.height,
        "method": m.name,
        "method_options": m.describe(),
        "loras": [one.describe() for one in loras],
        "steps": s.steps,
        "guidance": s.guidance,
        "seeds": request.seeds,
        "scheduler": s.scheduler_label,
        "model": getattr(adapter, "source", None) or adapter.pipe.config.get("_name_or_path", ""),
        **{k: v for k, v in adapter.describe().items() if k in ("family", "native_size", "prediction_type")},
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "tiled_vae": s.tiled_vae,
        "versions": _versions(),
    }
    runtime = getattr(adapter, "runtime", None)
    if runtime is not None and not runtime.is_default:  # absent: eager, torch's own SDPA choice
        config["runtime"] = runtime.describe()
    if controls is not None:
        config["controls"] = controls.describe()
        if controls.guess_mode:
            config["control_guess_mode"] = True
    return config


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {"anysize": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}

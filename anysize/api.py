"""The Python front end: validate, fill defaults, run a method, return images with their config.

    import anysize
    model = anysize.load("stabilityai/stable-diffusion-xl-base-1.0", dtype="fp16", device="cuda")
    result = anysize.generate(model, "a castle", width=4096, height=2048, method="direct", seed=0)
    result.save("castle.png")          # PNG with A1111 `parameters` and full JSON config

No math lives here.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from . import methods as _methods
from .errors import InvalidArgumentError, InvalidSizeError
from .models import ModelAdapter, adapt
from .models import load as _load_model
from .models.base import Conditioning, as_list
from .sampling import StepCallback, make_generators
from .schedulers import make_scheduler, scheduler_name

def load(model: str | os.PathLike | None = None, **kwargs) -> ModelAdapter:
    """Load a pipeline (hub id or local folder) into its family adapter. See :func:`anysize.models.load`."""
    if model is None:
        from .defaults import default_model_path

        model = default_model_path()
    return _load_model(model, **kwargs)


@dataclass
class Job:
    """One validated generation request, as methods see it."""

    adapter: ModelAdapter
    prompts: list[str]
    negative: list[str] | None
    height: int
    width: int
    steps: int
    guidance: float
    seeds: list[int]
    scheduler: str | None
    cond: Conditioning
    generators: list[torch.Generator]
    callback: StepCallback | None = None
    cancel: threading.Event | None = None
    progress: bool = True

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = self.adapter.vae_factor
        return self.height // f, self.width // f

    def make_scheduler(self):
        return make_scheduler(self.adapter, self.scheduler)


@dataclass
class GenerationResult:
    images: list
    latents: torch.Tensor
    config: dict[str, Any]
    seconds: float
    network_calls: int

    @property
    def image(self):
        return self.images[0]

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


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {v!r}")
    return v


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
    method: str = "direct",
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
) -> GenerationResult:
    """Generate one image per prompt at any size with a registered method.

    ``model`` is an adapter from :func:`load` or a diffusers pipeline. ``width``/``height`` default
    to the model's native size and must be multiples of its pixel factor. ``seed`` is one integer
    (image i uses seed + i) or one per prompt. ``callback(StepInfo)`` runs after every step and may
    return False to cancel, as may setting ``cancel``.
    """
    adapter = adapt(model)
    prompts = as_list(prompt)
    if prompts is None:
        raise InvalidArgumentError("no prompt given")
    negative = as_list(negative_prompt, "negative prompt")
    if negative is not None and len(negative) == 1 and len(prompts) > 1:
        negative = negative * len(prompts)
    if negative is not None and len(negative) != len(prompts):
        raise InvalidArgumentError(f"{len(negative)} negative prompts for {len(prompts)} prompts")

    nh, nw = adapter.native_size
    height = nh if height is None else height
    width = nw if width is None else width
    adapter.check_size(height, width)
    _check_fits(adapter, height, width, len(prompts))

    m = _methods.create(method, **(method_options or {}))
    m.check(adapter, height, width)

    steps = adapter.default_steps if steps is None else _positive_int("steps", steps)
    guidance = adapter.default_guidance if guidance is None else float(guidance)
    if guidance < 0:
        raise InvalidArgumentError(f"guidance must be >= 0, got {guidance}")
    if isinstance(seed, (list, tuple)) and len(seed) != len(prompts):
        raise InvalidArgumentError(f"{len(seed)} seeds for {len(prompts)} prompts")
    if tiled_vae not in (True, False, "auto", "fast"):
        raise InvalidArgumentError(f"tiled_vae must be True, False, 'auto' or 'fast', got {tiled_vae!r}")
    if output_type not in ("pil", "np", "pt", "latent"):
        raise InvalidArgumentError(f"output_type must be one of pil, np, pt, latent; got {output_type!r}")
    scheduler_label = scheduler_name(make_scheduler(adapter, scheduler))  # validates before any work

    generators = make_generators(seed, len(prompts))
    seeds = [g.initial_seed() for g in generators]
    start = time.perf_counter()
    calls0 = adapter.calls
    with torch.no_grad():
        cond = adapter.encode_prompt(prompts, negative, guidance_scale=guidance)
        job = Job(
            adapter, prompts, negative, height, width, steps, guidance, seeds, scheduler, cond, generators,
            callback, cancel, progress,
        )
        latents = m.run(job)
        if output_type == "latent":
            images = latents
        else:
            if tiled_vae == "fast":  # tiled, GroupNorm statistics estimated from a small pass
                decoded = adapter.decode(latents, tiled=True, progress=progress, stats="fast")
            else:
                decoded = adapter.decode(latents, tiled=tiled_vae, progress=progress)
            images = adapter.postprocess(decoded, output_type=output_type)
    seconds = time.perf_counter() - start

    config = {
        "prompts": prompts,
        "negative_prompts": negative,
        "width": width,
        "height": height,
        "method": m.name,
        "method_options": m.describe(),
        "steps": steps,
        "guidance": guidance,
        "seeds": seeds,
        "scheduler": scheduler_label,
        "model": getattr(adapter, "source", None) or adapter.pipe.config.get("_name_or_path", ""),
        **{k: v for k, v in adapter.describe().items() if k in ("family", "native_size", "prediction_type")},
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "tiled_vae": tiled_vae,
        "versions": _versions(),
    }
    return GenerationResult(images, latents, config, seconds, adapter.calls - calls0)


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {"anysize": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}

"""The options several commands share, declared once and checked before any model loads.

Which model (``--model``, ``--family``), how it runs (``--dtype``, ``--device``, ``--offload``,
``--compile``, ``--sdpa``) and
how it samples (``--scheduler``, ``--tiled-vae``, ``--steps``, ``--guidance``, ``--seed``); then
the load itself. The valid choices in every help text come from the code that defines them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import InvalidArgumentError, ModelLoadError, check_choice
from .inputs import check_multiple

#: --tiled-vae word -> the ``tiled_vae`` value of anysize.generate / anysize.upscale
TILED_VAE_MODES = {"auto": "auto", "on": True, "off": False, "fast": "fast"}


def add_model_options(p) -> None:
    from ..models import FAMILIES

    p.add_argument(
        "--model", metavar="M", default=None,
        help="hub id (e.g. stabilityai/stable-diffusion-xl-base-1.0) or local diffusers folder "
        "(default: the embedded default model)",
    )
    p.add_argument("--family", metavar="NAME", default=None,
                   help=f"override the detected model family: {', '.join(FAMILIES)}")


def add_runtime_options(p) -> None:
    from ..models import DTYPES, OFFLOADS

    p.add_argument("--dtype", metavar="T", default="fp32", help=f"{', '.join(DTYPES)} (default: fp32)")
    p.add_argument("--device", metavar="DEV", default=None,
                   help=f"cpu, cuda, cuda:N, mps (default: {DEFAULT_DEVICE_ORDER})")
    p.add_argument("--offload", metavar="MODE", default="none",
                   help=f"{', '.join(OFFLOADS)}: move weights to the GPU only while used (default: none)")
    add_speed_options(p)


#: what --compile costs and gains, said once for every command that has it
COMPILE_HELP = (
    "torch.compile the denoiser (opt-in): the first network call of each input shape (window size, "
    "batch) compiles, from tens of seconds to minutes per shape; every later step and tile of that "
    "shape reuses the compiled graph (the GPU speed-up: benchmarks/compile_speed); outputs match eager "
    "within float rounding"
)


def sdpa_help() -> str:
    from ..models import SDPA_BACKENDS

    return (f"attention kernel of every network call: {', '.join(SDPA_BACKENDS)} (default: auto, torch's "
            "own choice); a kernel this device or dtype cannot run is refused before the run")


def add_speed_options(p) -> None:
    """--compile and --sdpa: how the denoiser runs (generate, upscale, batch, app, eval, demo, bench)."""
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--sdpa", metavar="BACKEND", default="auto", help=sdpa_help())


def check_speed_options(args) -> None:
    from ..models.runtime import check_sdpa

    check_sdpa(args.sdpa)
    if args.compile and getattr(args, "offload", "none") != "none":
        raise InvalidArgumentError(f"--compile needs the weights on the device for the whole run; drop --offload {args.offload}")


def scheduler_help() -> str:
    from ..schedulers import SCHEDULERS

    return f"default, {', '.join(SCHEDULERS)} (default: the model's own)"


#: what default_device() picks, as its help texts say it
DEFAULT_DEVICE_ORDER = "cuda if available, else mps if available, else cpu"


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str, offload: str) -> str:
    import torch

    from ..models import check_device as check

    check(device, cpu_hint="--device cpu")
    if offload != "none" and torch.device(device).type == "cpu":
        raise InvalidArgumentError(f"--offload {offload} moves weights to an accelerator and needs --device cuda, not cpu")
    return device


def check_seed(seed: int, count: int = 1) -> int:
    """--seed in [0, 2^63 - 1], also for the last of ``count`` images (image i uses seed + i)."""
    from ..api import check_seed as check

    return check(seed, count, name="--seed")


def check_model_options(args) -> str:
    """Validate --model/--family/--dtype/--device/--offload without loading; returns the device."""
    from ..models import DTYPES, FAMILIES, OFFLOADS

    check_choice("dtype", args.dtype, DTYPES)
    check_choice("offload", args.offload, OFFLOADS)
    check_speed_options(args)
    if args.family is not None:
        check_choice("family", args.family, FAMILIES)
    device = check_device(args.device or default_device(), args.offload)
    if args.model is not None:
        local = Path(args.model).expanduser()
        if not local.exists() and str(args.model).startswith((".", "/", "~", os.sep)):
            raise ModelLoadError(f"model folder {args.model} does not exist")
    return device


def check_run_options(args):
    """Validate --scheduler/--tiled-vae/--steps/--guidance/--seed (generate, upscale); returns the tiled-VAE mode."""
    from ..schedulers import SCHEDULERS

    check_choice("scheduler", args.scheduler, ["default", *SCHEDULERS])
    tiled = TILED_VAE_MODES[check_choice("tiled-vae mode", args.tiled_vae, TILED_VAE_MODES)]
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise InvalidArgumentError(f"--guidance must be a number >= 0, got {args.guidance}")
    check_seed(args.seed)
    return tiled


def check_sizes(args, sizes) -> None:
    """Sizes must be multiples of the model's pixel factor, known before loading where possible."""
    from ..models.config_files import MIN_SIZE_FACTOR, size_factor

    sizes = [s for s in sizes if s is not None]
    if not sizes:
        return
    hint = size_factor(args.model, args.family)
    factor, why = hint or (MIN_SIZE_FACTOR, "every supported model needs at least that")
    for width, height in sizes:
        check_multiple(width, height, factor, why)


def load_model(args, device: str):
    from .. import api

    # a --family that does not fit the pipeline's layout is refused by the load (FamilyMismatchError)
    return api.load(args.model, family=args.family, dtype=args.dtype, device=device, offload=args.offload,
                    compile=args.compile, sdpa=args.sdpa)

"""The ``anysize`` command line: a thin layer over :func:`anysize.load` and :func:`anysize.generate`.

Every subcommand is one builder in :data:`COMMANDS` (name -> function that adds its parser and sets
``func``), so later ones (``upscale``, ``demo``, ``eval``, ``bench``) plug in without touching the
others. Everything that can be checked is checked before a model is loaded; every user error ends
as one line ``anysize: error: <message>`` on stderr with exit code 2, Ctrl-C as exit code 130,
and neither leaves a file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import AnysizeError, Cancelled, InvalidArgumentError, InvalidSizeError, ModelLoadError, OutputError
from .errors import check_choice

PROG = "anysize"
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130

#: every supported family's pixel factor is a multiple of this (SD/SDXL 8, SD3/FLUX 16)
MIN_SIZE_FACTOR = 8

TOP_EPILOG = """\
examples:
  # the embedded default model (a tiny stand-in: fast, noise-like images)
  anysize generate "a red triangle on a blue background" --size 256x128 --steps 20

  # SDXL at 4096x2048 on a GPU
  anysize generate "a castle on a cliff" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --size 4096x2048 --dtype fp16 --device cuda --method direct --seed 7 --out castle.png

  # several prompts: one PNG each in a directory (image i uses seed + i)
  anysize generate "a cat" "a dog" --seed 7 --out pets/
  anysize generate --prompts-file prompts.txt --out batch/

  anysize methods             # the registered methods and their options
  anysize generate --help     # every generate option, with the valid choices
"""


class _UsageError(Exception):
    """An argparse usage error, reported like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401  (argparse API)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------------ parsing


_SIZE_RE = re.compile(r"^\s*([^xX×*]+?)\s*[xX×*]\s*([^xX×*]+?)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height), positive integers; InvalidSizeError otherwise."""
    m = _SIZE_RE.match(text or "")
    if not m:
        raise InvalidSizeError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)")
    out = []
    for name, part in zip(("width", "height"), m.groups()):
        try:
            v = int(part)
        except ValueError:
            raise InvalidSizeError(
                f"size {text!r}: {name} {part!r} is not an integer; give WIDTHxHEIGHT in pixels, e.g. 1024x768"
            ) from None
        if v <= 0:
            raise InvalidSizeError(f"size {text!r}: {name} must be a positive number of pixels, got {v}")
        out.append(v)
    return out[0], out[1]


def check_multiple(width: int, height: int, factor: int, why: str) -> None:
    """Sizes must be multiples of the model's pixel factor; the message proposes the nearest ones."""
    for name, v in (("width", width), ("height", height)):
        if v % factor:
            lo, hi = (v // factor) * factor, (v // factor + 1) * factor
            valid = f"{lo} or {hi}" if lo > 0 else f"{hi}"
            raise InvalidSizeError(f"{name} {v} is not a multiple of {factor} ({why}); use {valid}")


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs -> method options; values are JSON when they parse, else strings."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidArgumentError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value
    return options


def read_prompts(positional: Sequence[str], prompts_file: str | None) -> list[str]:
    """Prompts from the command line, then one per non-empty line of ``prompts_file`` ('-': stdin)."""
    prompts = list(positional or [])
    if prompts_file is not None:
        try:
            if prompts_file == "-":
                text = sys.stdin.read()
            else:
                text = Path(prompts_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(f"cannot read prompts file {prompts_file}: {getattr(e, 'strerror', None) or e}") from None
        from_file = [line.strip() for line in text.splitlines() if line.strip()]
        if not from_file:
            raise InvalidArgumentError(f"prompts file {prompts_file} has no prompts (one per non-empty line)")
        prompts += from_file
    if not prompts:
        raise InvalidArgumentError("no prompt given: pass one or more PROMPTs or --prompts-file FILE")
    return prompts


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

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidArgumentError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} is not available (no CUDA GPU visible to torch); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidArgumentError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvalidArgumentError(f"device {device!r} is not available; use --device cpu")
    if offload != "none" and dev.type == "cpu":
        raise InvalidArgumentError(f"--offload {offload} moves weights to an accelerator and needs --device cuda, not cpu")
    return device


# ------------------------------------------------------------------------------------------ size factor


def _model_file(model: str | None, name: str) -> Path | None:
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
    """The model's pixel factor from its config files when they are at hand, without loading it."""
    if model is None:
        from .defaults import SHIPPED_MODEL

        model = str(SHIPPED_MODEL)
    try:
        index = _model_file(model, "model_index.json")
        vae = _model_file(model, "vae/config.json")
        if index is None or vae is None:
            return None
        components = json.loads(index.read_text(encoding="utf-8"))
        blocks = json.loads(vae.read_text(encoding="utf-8")).get("block_out_channels")
        if not blocks:
            return None
        factor = 2 ** (len(blocks) - 1)
        dit = "transformer" in components if family is None else family in ("sd3", "flux")
        if dit:
            factor *= 2  # DiT patch size 2
        return factor, "this model's pixel factor"
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def check_family_fits(pipe, family: str) -> None:
    """--family overrides detection (e.g. SD 1.x vs 2.x), but cannot make one pipeline layout another."""
    from .models import detect_family

    groups = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux", "sd-x4-upscaler": "sd-x4-upscaler"}
    try:
        detected = detect_family(pipe)
    except AnysizeError:
        return  # detection failed: the override is what the user knows
    if groups[detected] != groups[family]:
        raise InvalidArgumentError(
            f"--family {family} does not fit this model: its components are those of a {detected} pipeline "
            f"({type(pipe).__name__}); leave --family out to detect it"
        )


# ------------------------------------------------------------------------------------------ outputs


def default_filename(method: str, width: int, height: int, seed: int) -> str:
    return f"anysize-{method}-{width}x{height}-s{seed}.png"


def plan_outputs(out: str | None, n: int, method: str, size: tuple[int, int] | None, seed: int) -> list[Path] | None:
    """The file of each image, or None when the name needs the model's native size (known after loading)."""
    if n > 1:
        folder = Path(out) if out is not None else Path("anysize-out")
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {folder} is a file; with {n} prompts --out must be a directory")
        if not folder.exists() and folder.suffix.lower() == ".png":
            raise OutputError(f"with {n} prompts --out is a directory, not a .png file (got {folder})")
        width = max(3, len(str(n - 1)))
        return [folder / f"{i:0{width}d}-s{seed + i}.png" for i in range(n)]
    if out is not None and not (Path(out).is_dir() or out.endswith(("/", os.sep))):
        path = Path(out)
        if path.suffix.lower() != ".png":
            raise OutputError(f"--out {out} must end in .png (anysize writes PNG files with their parameters)")
        return [path]
    if size is None:
        return None
    name = default_filename(method, size[0], size[1], seed)
    return [Path(out) / name if out is not None else Path(name)]


# ------------------------------------------------------------------------------------------ library noise


@contextlib.contextmanager
def _library_output(quiet: bool):
    """Silence known-harmless warnings; with --quiet also diffusers/transformers logging and bars."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`torch_dtype` is deprecated", category=FutureWarning)
        if not quiet:
            yield
            return
        saved = []
        for lib in ("diffusers", "transformers"):
            try:
                logging = __import__(f"{lib}.utils.logging", fromlist=["logging"])
            except ImportError:  # pragma: no cover
                continue
            saved.append((logging, logging.get_verbosity(), logging.is_progress_bar_enabled()))
            logging.set_verbosity_error()
            logging.disable_progress_bar()
        try:
            yield
        finally:
            for logging, verbosity, bars in saved:
                logging.set_verbosity(verbosity)
                if bars:
                    logging.enable_progress_bar()


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ generate


def _method_lines() -> list[str]:
    from . import methods

    return [f"  {name:<14} {methods.get(name).summary}" for name in methods.names()]


def _add_model_options(p) -> None:
    from .models import FAMILIES

    p.add_argument(
        "--model", metavar="M", default=None,
        help="hub id (e.g. stabilityai/stable-diffusion-xl-base-1.0) or local diffusers folder "
        "(default: the embedded default model)",
    )
    p.add_argument("--family", metavar="NAME", default=None,
                   help=f"override the detected model family: {', '.join(FAMILIES)}")


def _add_runtime_options(p) -> None:
    from .models import DTYPES, OFFLOADS

    p.add_argument("--dtype", metavar="T", default="fp32", help=f"{', '.join(DTYPES)} (default: fp32)")
    p.add_argument("--device", metavar="DEV", default=None,
                   help="cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
    p.add_argument("--offload", metavar="MODE", default="none",
                   help=f"{', '.join(OFFLOADS)}: move weights to the GPU only while used (default: none)")


def _check_model_options(args) -> str:
    """Validate --model/--family/--dtype/--device/--offload without loading; returns the device."""
    from .models import DTYPES, FAMILIES, OFFLOADS

    check_choice("dtype", args.dtype, DTYPES)
    check_choice("offload", args.offload, OFFLOADS)
    if args.family is not None:
        check_choice("family", args.family, FAMILIES)
    device = check_device(args.device or default_device(), args.offload)
    if args.model is not None:
        local = Path(args.model).expanduser()
        if not local.exists() and str(args.model).startswith((".", "/", "~", os.sep)):
            raise ModelLoadError(f"model folder {args.model} does not exist")
    return device


def _check_run_options(args):
    """Validate --scheduler/--tiled-vae/--steps/--guidance/--seed (generate, upscale); returns the tiled-VAE mode."""
    from .schedulers import SCHEDULERS

    check_choice("scheduler", args.scheduler, ["default", *SCHEDULERS])
    tiled = {"auto": "auto", "on": True, "off": False, "fast": "fast"}[
        check_choice("tiled-vae mode", args.tiled_vae, ["auto", "on", "off", "fast"])]
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise InvalidArgumentError(f"--guidance must be a number >= 0, got {args.guidance}")
    if not 0 <= args.seed < 2**63:
        raise InvalidArgumentError(f"--seed must be between 0 and {2**63 - 1}, got {args.seed}")
    return tiled


def _check_sizes(args, sizes) -> None:
    """Sizes must be multiples of the model's pixel factor, known before loading where possible."""
    sizes = [s for s in sizes if s is not None]
    if not sizes:
        return
    hint = size_factor(args.model, args.family)
    factor, why = hint or (MIN_SIZE_FACTOR, "every supported model needs at least that")
    for width, height in sizes:
        check_multiple(width, height, factor, why)


def _load_model(args, device: str):
    from . import api

    adapter = api.load(args.model, family=args.family, dtype=args.dtype, device=device, offload=args.offload)
    if args.family is not None:
        check_family_fits(adapter.pipe, args.family)
    return adapter


def _build_generate(sub) -> None:
    from . import methods
    from .schedulers import SCHEDULERS, scheduler_names

    description = """\
Generate one PNG per prompt at any size, with a registered method.

Sizes are WIDTHxHEIGHT in pixels and must be multiples of the model's pixel factor: 8 for
SD 1.x/2.x and SDXL, 16 for SD3 and FLUX, 4 for the embedded toy model (e.g. 4096x2048). Without
--size the model's native size is used (1024x1024 for SDXL, 512x512 for SD 1.5, 128x128 for the
embedded default model).

Without --model the embedded default model is used: anysize's own toy model, an SD 1.5-structured
pipeline trained on one coloured shape on a background ("a red triangle on a blue background";
objects red, green, blue, yellow, purple or orange; shapes circle, square, triangle, star). It runs in about a second on a CPU and, like SD at 2x its native side,
duplicates its object at larger sizes: the failure the methods are there to fix.

Every PNG carries an A1111-style "parameters" text chunk and an "anysize" JSON chunk with the full
configuration. Files are written atomically and never overwritten without --force.

methods (--method; options with --set KEY=VALUE, see 'anysize methods'):
""" + "\n".join(_method_lines()) + f"""

schedulers (--scheduler; default: the model's own):
  U-Net models (SD 1.x/2.x, SDXL): {', '.join(scheduler_names('diffusion'))}
  flow models (SD3, FLUX):         {', '.join(scheduler_names('flow'))}
"""
    epilog = """\
examples:
  anysize generate "a red triangle on a blue background" --size 256x128 --steps 20
  anysize generate "a castle on a cliff" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --size 4096x2048 --dtype fp16 --device cuda --out castle.png
  anysize generate --prompts-file prompts.txt --seed 100 --out batch/
"""
    p = sub.add_parser(
        "generate", help="generate images from text prompts at any size", description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts (one image each)")
    p.add_argument("--prompts-file", metavar="FILE", help="more prompts, one per non-empty line ('-': stdin)")
    p.add_argument("--negative", metavar="TEXT", default=None, help="negative prompt (for every image)")
    _add_model_options(p)
    p.add_argument("--size", metavar="WxH", default=None,
                   help="image size in pixels, multiples of the model's factor (default: the model's native size)")
    p.add_argument("--method", metavar="NAME", default="direct",
                   help=f"generation method: {', '.join(methods.names())} (default: direct)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable); VALUE is read as JSON when it parses, else as text")
    p.add_argument("--lora", metavar="PATH", default=None,
                   help="a LoRA for the methods that take one (asd: the ARAD LoRA of stage I); same as --set lora=PATH")
    p.add_argument("--steps", type=int, metavar="N", default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, metavar="G", default=None,
                   help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, metavar="S", default=0,
                   help="random seed; image i of several uses S + i (default: 0)")
    p.add_argument("--scheduler", metavar="NAME", default="default",
                   help=f"default, {', '.join(SCHEDULERS)} (default: the model's own)")
    _add_runtime_options(p)
    p.add_argument("--tiled-vae", metavar="MODE", default="auto",
                   help="auto, on, off, fast: decode in tiles with whole-image GroupNorm statistics to bound memory; "
                   "auto tiles above 2048x2048 px; on forces it (exact statistics, ~8x a plain decode); fast "
                   "estimates the statistics from a small pass (about the cost of a plain decode) (default: auto)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="one prompt: the PNG file (default: anysize-<method>-<W>x<H>-s<seed>.png); an existing "
                   "directory or a path ending in / gets the default name inside. Several prompts: a directory "
                   "(default: anysize-out/) with files NNN-s<seed>.png")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes; print only the paths written")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from . import api, methods
    from .schedulers import make_scheduler

    quiet = args.quiet
    # ---- everything that can be checked without the model
    size = parse_size(args.size) if args.size is not None else None
    check_choice("method", args.method, methods.names())
    options = parse_set(args.set)
    if args.lora is not None:
        options["lora"] = args.lora
    methods.create(args.method, **options)  # unknown options / out-of-range values
    tiled = _check_run_options(args)
    device = _check_model_options(args)
    prompts = read_prompts(args.prompts, args.prompts_file)
    _check_sizes(args, [size])
    outputs = plan_outputs(args.out, len(prompts), args.method, size, args.seed)
    for path in outputs or ():
        from .output import check_writable

        check_writable(path, args.force)

    # ---- the model
    with _library_output(quiet):
        adapter = _load_model(args, device)
        if size is None:
            height, width = adapter.native_size
        else:
            width, height = size
        adapter.check_size(height, width)
        make_scheduler(adapter, args.scheduler)  # a flow scheduler on a U-Net model and the like
        if outputs is None:
            outputs = plan_outputs(args.out, len(prompts), args.method, (width, height), args.seed)
            from .output import check_writable

            for path in outputs:
                check_writable(path, args.force)

        # ---- the work: one image at a time, each saved as soon as it is done
        from .output import save_png

        negative = args.negative or None
        for i, (prompt, path) in enumerate(zip(prompts, outputs)):
            if len(prompts) > 1:
                _note(quiet, f"[{i + 1}/{len(prompts)}] {prompt}")
            result = api.generate(
                adapter, prompt, negative_prompt=negative, width=width, height=height, method=args.method,
                steps=args.steps, guidance=args.guidance, seed=args.seed + i, scheduler=args.scheduler,
                tiled_vae=tiled, progress=not quiet, method_options=options,
            )
            written = save_png(result.images[0], path, result.config_for(0), force=args.force)
            print(written, flush=True)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ upscale


def _refining_methods() -> list[str]:
    from . import methods

    return [n for n in methods.names() if methods.get(n).refines]


def _build_upscale(sub) -> None:
    from .schedulers import SCHEDULERS

    description = """\
Enlarge an image SDEdit-style: resize it (bicubic) to the target, encode it with the model's VAE,
re-noise it to --strength and denoise it with a tiled method at the model's native tile size,
then decode (the VAE is tiled above 2048x2048 px; beyond the model, memory then grows by about
19 bytes per output pixel: 2.1 GiB peak at 8192x8192 on the toy model, see benchmarks/).

With the Stable Diffusion x4 upscaler (--model stabilityai/stable-diffusion-x4-upscaler, or any
StableDiffusionUpscalePipeline folder) the image is instead resized to a quarter of the target,
noised to --noise-level and fed, crop by crop, to every tile the method denoises.

The target is --scale S (each side times S, rounded to the nearest multiple of the model's pixel
factor; a note says when that moved it) or --size WxH (multiples of the factor). --strength is
the fraction of the --steps schedule that is re-run: low keeps the image, high invents detail
(and, with object words in --prompt, objects in every tile; a generic prompt is best).

The PNG carries the full parameters (A1111 "parameters" chunk, "Denoising strength", and an
"anysize" JSON chunk with the input image's name, scale, strength and method options).

methods that can upscale (--method; options with --set KEY=VALUE, see 'anysize methods'):
""" + "\n".join(l for l in _method_lines() if l.split()[0] in _refining_methods())
    epilog = """\
examples:
  anysize upscale photo.png --scale 4 --method fstd --strength 0.4 --prompt "high quality, detailed"
  anysize upscale photo.png --size 4096x2048 --method multidiffusion --model stabilityai/stable-diffusion-2-1-base \\
      --dtype fp16 --device cuda --out big.png
"""
    p = sub.add_parser(
        "upscale", help="enlarge an image with a tiled method (SDEdit-style)", description=description,
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to enlarge (any format Pillow reads)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--scale", type=float, metavar="S", default=None, help="enlarge each side S times (> 0)")
    target.add_argument("--size", metavar="WxH", default=None, help="the exact output size in pixels")
    p.add_argument("--method", metavar="NAME", default="fstd",
                   help=f"tiled method: {', '.join(_refining_methods())} (default: fstd)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable); VALUE is read as JSON when it parses, else as text")
    p.add_argument("--strength", type=float, metavar="X", default=None,
                   help="img2img strength in (0, 1]: the fraction of the schedule re-run (default: 0.4; 1 for the "
                   "x4 upscaler, which starts from noise conditioned on the image)")
    p.add_argument("--noise-level", type=int, metavar="N", default=None,
                   help="x4 upscaler only: noise added to the low-res image, 0-350 (default: 20)")
    p.add_argument("--prompt", default="", help="prompt of every tile (default: empty)")
    p.add_argument("--negative", metavar="TEXT", default=None, help="negative prompt")
    _add_model_options(p)
    p.add_argument("--steps", type=int, metavar="N", default=None,
                   help="steps of the full schedule; about strength x N run (default: the model's)")
    p.add_argument("--guidance", type=float, metavar="G", default=None,
                   help="classifier-free guidance scale (default: the model's; 1, i.e. none, without a prompt)")
    p.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (default: 0)")
    p.add_argument("--scheduler", metavar="NAME", default="default",
                   help=f"default, {', '.join(SCHEDULERS)} (default: the model's own)")
    _add_runtime_options(p)
    p.add_argument("--tiled-vae", metavar="MODE", default="auto",
                   help="auto, on, off, fast: as in 'anysize generate' (default: auto, tiled above 2048x2048 px)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="the PNG file (default: <image name>-<method>-<W>x<H>-s<seed>.png in the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes; print only the path written")
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    from . import api, methods
    from .output import check_writable, save_png
    from .schedulers import make_scheduler

    quiet = args.quiet
    # ---- everything that can be checked without the model
    if args.scale is None and args.size is None:
        raise InvalidArgumentError("give the target as --scale S or --size WxH")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise InvalidArgumentError(f"--scale must be a number > 0, got {args.scale}")
    size = parse_size(args.size) if args.size is not None else None
    check_choice("method", args.method, methods.names())
    if not methods.get(args.method).refines:
        raise InvalidArgumentError(
            f"method {args.method!r} makes its own canvas in several stages and cannot upscale an image; "
            f"use one of: {', '.join(_refining_methods())}"
        )
    options = parse_set(args.set)
    methods.create(args.method, **options)
    from .sampling import check_strength

    if args.strength is not None:
        check_strength(args.strength)
    tiled = _check_run_options(args)
    device = _check_model_options(args)
    source = api.load_image(args.image)  # unreadable images fail before the model loads
    _check_sizes(args, [size])
    if args.out is not None and Path(args.out).suffix.lower() != ".png" and not Path(args.out).is_dir():
        raise OutputError(f"--out {args.out} must end in .png (anysize writes PNG files with their parameters)")

    with _library_output(quiet):
        adapter = _load_model(args, device)
        height, width, rounded = api.upscale_size(
            (source.height, source.width), adapter.size_multiple, scale=args.scale, size=size)
        if rounded:
            _note(quiet, f"{source.width}x{source.height} x {args.scale:g} rounded to {width}x{height} "
                         f"(multiples of {adapter.size_multiple}, the model's pixel factor)")
        out = Path(args.out) if args.out is not None else Path(".")
        if args.out is None or out.is_dir():
            out = out / f"{Path(args.image).stem}-{args.method}-{width}x{height}-s{args.seed}.png"
        check_writable(out, args.force)
        make_scheduler(adapter, args.scheduler)
        result = api.upscale(
            adapter, args.image, scale=args.scale, size=size, method=args.method, strength=args.strength,
            noise_level=args.noise_level, prompt=args.prompt, negative_prompt=args.negative or None, steps=args.steps,
            guidance=args.guidance,
            seed=args.seed, scheduler=args.scheduler, tiled_vae=tiled, progress=not quiet, method_options=options,
        )
        written = save_png(result.images[0], out, result.config_for(0), force=args.force)
    print(written, flush=True)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ methods


def _type_name(t) -> str:
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", None) or str(t)


def describe_methods() -> str:
    """The registered methods, their summaries and their options (name, type, default)."""
    from . import methods

    lines = []
    for name in methods.names():
        cls = methods.get(name)
        lines.append(f"{name}: {cls.summary}")
        families = getattr(cls, "families", None)
        lines.append(f"  families: {', '.join(families) if families else 'all'}")
        fields = dataclasses.fields(cls.Options)
        if not fields:
            lines.append("  options: none")
        else:
            lines.append("  options:")
            for f in fields:
                if f.default is not dataclasses.MISSING:
                    default = repr(f.default)
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = repr(f.default_factory())  # type: ignore[misc]
                else:
                    default = "required"
                lines.append(f"    {f.name} ({_type_name(f.type)}, default {default})")
    return "\n".join(lines)


def _build_methods(sub) -> None:
    p = sub.add_parser(
        "methods", help="list the registered methods and their options",
        description="List the registered methods, their summaries and their options (use them with "
        "'anysize generate --method NAME --set KEY=VALUE').",
    )
    p.set_defaults(func=cmd_methods)


def cmd_methods(args: argparse.Namespace) -> int:
    print(describe_methods())
    return EXIT_OK


# ------------------------------------------------------------------------------------------ demo


def _build_demo(sub) -> None:
    from .toy.demo import COLUMNS, DEFAULT_PROMPT

    p = sub.add_parser(
        "demo", help="every method at native size and beyond, on one labelled comparison sheet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
Generate a comparison sheet: one row per registered method, one column per size
({', '.join(c[0] for c in COLUMNS)} of the model's native size), each cell labelled with what
the composition analysis finds (number of prompted objects; does colour and shape match). The
figures also go to a JSON file. On the embedded toy model the whole sheet takes a few minutes on
2 CPU cores; 'direct' shows the seeds' failure (the object duplicated at larger sizes).""",
        epilog="""\
examples:
  anysize demo                                    # anysize-demo.png + anysize-demo.json
  anysize demo --prompt "a yellow star on a black background" --seed 3 --out star.png
  anysize demo --methods direct --steps 10        # quicker
""",
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every cell (default: %(default)r)")
    p.add_argument("--seed", type=int, default=0, help="seed of every cell (default: 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: 10, or the model's default if lower — quick enough for every row)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                   help="only these methods (default: every registered method that supports the model)")
    _add_model_options(p)
    _add_runtime_options(p)
    p.add_argument("--out", default="anysize-demo.png", help="the sheet (default: %(default)s)")
    p.add_argument("--json", default=None, help="the metrics (default: the sheet's name with .json)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from . import methods
    from .output import check_writable, save_json, save_png
    from .toy.demo import render_sheet, run_demo

    for m in args.methods or ():
        check_choice("method", m, methods.names())
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    device = _check_model_options(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out {out} must end in .png")
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    check_writable(out, args.force)
    check_writable(json_path, args.force)
    with _library_output(args.quiet):
        adapter = _load_model(args, device)
        result = run_demo(adapter, prompt=args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                          methods=args.methods, progress=not args.quiet)
        sheet = render_sheet(result, title=f"{args.prompt!r}  seed {args.seed}  {result.config['steps']} steps")
        save_png(sheet, out, {**result.config, "kind": "anysize demo sheet"}, force=args.force)
        save_json(result.records(), json_path, force=args.force)
    print(out)
    print(json_path)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ eval


def _build_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate methods: composition (toy world), metrics (FID/KID/IS/CLIP), plots",
                       description="Evaluate methods: composition on the toy world; FID/KID/IS/CLIP, time and memory "
                       "on a prompt manifest (metrics); quality-vs-time plots (plot); COCO manifests (manifest).")
    evsub = p.add_subparsers(dest="eval_command", metavar="WHAT", title="evaluations")
    c = evsub.add_parser(
        "composition", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="how often a method keeps one object, duplicates it, or loses it, at a size",
        description="""\
Generate N toy-world prompts ("a red triangle on a blue background", ...) with each method at each
size and count, by image analysis, the prompted objects in every image: the share with exactly one
object, with several (duplication, the seeds' failure mode), with none, and with the prompted
colour and shape. Prompt i is toy caption i (--prompt-seed), generated with seed S + i.""",
        epilog="""\
examples:
  anysize eval composition --method direct --size 128x128 256x256 --n 64 --seed 0
  anysize eval composition --method direct --size 256x128 --n 16 --out wide.json
""",
    )
    c.add_argument("--method", nargs="+", default=["direct"], metavar="NAME", help="one or more methods")
    c.add_argument("--size", nargs="+", default=None, metavar="WxH", help="one or more sizes (default: native)")
    c.add_argument("--n", type=int, default=64, help="images per method and size (default: 64)")
    c.add_argument("--seed", type=int, default=0, help="image i uses seed S + i (default: 0)")
    c.add_argument("--prompt-seed", type=int, default=0, help="which toy captions (default: 0)")
    c.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    c.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    c.add_argument("--batch", type=int, default=8, help="images per network call (default: 8)")
    c.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable)")
    _add_model_options(c)
    _add_runtime_options(c)
    c.add_argument("--out", default=None,
                   help="JSON results (default: anysize-eval-composition-<first method>-n<N>-s<S>.json)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_eval_composition)
    _build_eval_metrics(evsub)
    _build_eval_plot(evsub)
    _build_eval_manifest(evsub)
    p.set_defaults(func=lambda a: _error(
        f"choose an evaluation: composition, metrics, plot, manifest (see '{PROG} eval --help')"))


def _build_eval_metrics(evsub) -> None:
    from .eval.metrics import CLIP_MODEL, METRICS

    c = evsub.add_parser(
        "metrics", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="FID/KID (resized, crops, vs native size), IS, CLIP score, seconds/image, peak memory",
        description=f"""\
Generate one image per row of a prompt manifest (JSONL lines {{"id", "prompt", "seed"}}; default: the
shipped 32-prompt smoke set) with a method at a size, or score images made elsewhere (--from-dir DIR
with DIR/<id>.png), and compute:

  fid_r, kid_r   whole images resized to 299x299 (PIL bicubic, antialiased) vs --reference images
  fid_c, kid_c   --crops K random --crop-size crops per image (default: the model's native side;
                 positions seeded by each row's seed) vs the same crops of the --reference images
  fid_b, kid_b   vs the same model at its native size, same prompts and seeds (generated into
                 OUT/base/, or --base-dir DIR)
  is             Inception Score of the resized images (and of the crops when crops are computed)
  clip           CLIP score, 100 * max(cos, 0), torchmetrics CLIPScore with --clip-model
                 (default {CLIP_MODEL})

Features: Inception v3 with the FID weights (torch-fidelity; downloaded on first use; needs
'pip install anysize[eval]'). KID: unbiased, cubic kernel, --kid-subsets subsets of
--kid-subset-size (default min(1000, set sizes)). Time: seconds per image after one untimed warm-up,
device synchronised; peak memory: CUDA allocator (GPU) or process RSS (CPU).

Writes OUT/metrics.json, OUT/per_image.csv, OUT/metrics.md (a Markdown row), OUT/samples.png and the
images. For a 1k-prompt set: 'anysize eval manifest --coco captions_val2017.json --n 1000'.""",
        epilog="""\
examples:
  anysize eval metrics --model stabilityai/stable-diffusion-xl-base-1.0 --dtype fp16 --method direct \\
      --size 2048x2048 --prompts coco1k.jsonl --reference data/laion_hr --crops 10 --out runs/sdxl-2048-direct
  anysize eval metrics --from-dir other_repo_outputs/ --prompts coco1k.jsonl --reference data/laion_hr \\
      --crop-size 1024 --base-dir runs/sdxl-2048-direct/base --out runs/other
  anysize eval metrics --size 256x256 --limit 8 --metrics is,fid_b,kid_b --out runs/toy-256
""",
    )
    c.add_argument("--prompts", metavar="FILE", default=None, help="JSONL manifest (default: the 32-prompt smoke set)")
    c.add_argument("--limit", type=int, default=None, help="only the first N rows")
    c.add_argument("--method", default="direct", metavar="NAME", help="generation method (default: direct)")
    c.add_argument("--size", default=None, metavar="WxH", help="image size (default: native)")
    c.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    c.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    c.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable)")
    _add_model_options(c)
    _add_runtime_options(c)
    c.add_argument("--from-dir", metavar="DIR", default=None,
                   help="score DIR/<id>.png instead of generating (the model is then loaded only for FID_b)")
    c.add_argument("--reference", metavar="DIR", default=None, help="real images for fid_r/kid_r/fid_c/kid_c")
    c.add_argument("--base-dir", metavar="DIR", default=None, help="native-size images <id>.png for fid_b/kid_b")
    c.add_argument("--metrics", metavar="LIST", default=None,
                   help=f"comma-separated subset of {','.join(METRICS)} (default: all the inputs allow)")
    c.add_argument("--crops", type=int, default=10, help="crops per image for fid_c/kid_c (default: 10)")
    c.add_argument("--crop-size", type=int, default=None, help="crop side in px (default: the model's native side)")
    c.add_argument("--kid-subset-size", type=int, default=None, help="KID subset size (default: min(1000, n))")
    c.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    c.add_argument("--clip-model", default=CLIP_MODEL, metavar="M", help="CLIP model id or folder (default: %(default)s)")
    c.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="local copy of torch-fidelity's Inception weights (default: downloaded once by torch-fidelity)")
    c.add_argument("--warmup", type=int, default=1, help="untimed generations before timing (default: 1)")
    c.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: anysize-eval-<method>-<W>x<H>, or anysize-eval-<from-dir name>)")
    c.add_argument("--force", action="store_true", help="overwrite existing results")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_eval_metrics)


def cmd_eval_metrics(args: argparse.Namespace) -> int:
    from . import methods
    from .eval import metrics as M
    from .eval.run import markdown_header, markdown_row, plan_metrics, run_eval

    check_choice("method", args.method, methods.names())
    options = parse_set(args.set)
    methods.create(args.method, **options)
    size = parse_size(args.size) if args.size is not None else None
    for v, name in ((args.steps, "--steps"), (args.limit, "--limit"), (args.crop_size, "--crop-size"),
                    (args.kid_subset_size, "--kid-subset-size")):
        if v is not None and v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    for v, name in ((args.crops, "--crops"), (args.kid_subsets, "--kid-subsets")):
        if v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    if args.warmup < 0:
        raise InvalidArgumentError(f"--warmup must be >= 0, got {args.warmup}")
    requested = None
    if args.metrics is not None:
        requested = [m.strip() for m in args.metrics.split(",") if m.strip()]
    rows = M.load_manifest(args.prompts, args.limit)
    device = _check_model_options(args)
    _check_sizes(args, [size])
    need_model = args.from_dir is None or (
        args.base_dir is None and args.model is not None
        and (requested is None or any(m in ("fid_b", "kid_b") for m in requested)))
    plan_metrics(requested, reference=args.reference is not None, base=args.base_dir is not None or need_model)
    if args.reference is not None:
        M.list_images(args.reference, "reference folder")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        raise InvalidArgumentError(f"Inception weights file {args.inception_weights} does not exist")
    if args.from_dir is not None:
        M.find_images(args.from_dir, rows)
    if args.base_dir is not None:
        M.find_images(args.base_dir, rows, "--base-dir")
    if args.out is None:
        if args.from_dir is not None:
            name = f"anysize-eval-{Path(args.from_dir).resolve().name}"
        else:
            name = f"anysize-eval-{args.method}-{size[0]}x{size[1]}" if size else f"anysize-eval-{args.method}-native"
        args.out = name
    quiet = args.quiet
    with _library_output(quiet):
        adapter = _load_model(args, device) if need_model else None
        width, height = (size if size is not None else (None, None))
        if adapter is not None and size is not None:
            adapter.check_size(height, width)
        summary = run_eval(
            args.out, adapter=adapter, manifest=args.prompts, limit=args.limit, method=args.method, width=width,
            height=height, steps=args.steps, guidance=args.guidance, method_options=options, from_dir=args.from_dir,
            reference=args.reference, base_dir=args.base_dir, metrics=requested, crops=args.crops,
            crop_size=args.crop_size, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
            clip_model=args.clip_model, inception_weights=args.inception_weights, warmup=args.warmup, force=args.force, progress=not quiet,
            note=lambda msg: _note(quiet, msg),
        )
    print(markdown_header())
    print(markdown_row(summary))
    for f in summary["files"].values():
        print(f)
    return EXIT_OK


def _build_eval_plot(evsub) -> None:
    c = evsub.add_parser(
        "plot", help="quality vs seconds/image scatter over several 'eval metrics' runs",
        description="Plot one metric of several 'anysize eval metrics' runs against their seconds per image (PNG).",
        epilog="example:\n  anysize eval plot runs/* --metric fid_b --out fid_b-vs-time.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their metrics.json)")
    c.add_argument("--metric", default="fid_r", help="the y axis (default: fid_r)")
    c.add_argument("--out", default="anysize-quality-vs-time.png", help="the PNG (default: %(default)s)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.set_defaults(func=cmd_eval_plot)


def cmd_eval_plot(args: argparse.Namespace) -> int:
    from .eval.metrics import METRICS
    from .eval.plots import load_runs, quality_time_scatter
    from .output import _write_atomically, check_writable

    names = [m for m in METRICS if m not in ("is", "clip")] + ["is_r", "is_c", "clip_score"]
    check_choice("metric", args.metric, names)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out {out} must end in .png")
    check_writable(out, args.force)
    fig = quality_time_scatter(load_runs(args.runs), args.metric)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(out, out.parent, lambda f: fig.savefig(f, format="png"), args.force)
    print(out)
    return EXIT_OK


def _build_eval_manifest(evsub) -> None:
    c = evsub.add_parser(
        "manifest", help="make a prompt manifest (JSONL) from COCO captions or a caption table (LAION)",
        description="Write a JSONL prompt manifest {id, prompt, seed} of N captions, drawn with --seed, row seeds "
        "0..N-1. From a COCO captions file (--coco, e.g. annotations/captions_val2017.json: one caption per "
        "image), or from a caption table (--table: LAION metadata .parquet, or .csv/.tsv/.jsonl; caption column "
        "TEXT/caption/text/prompt or --column; --min-side keeps rows whose WIDTH and HEIGHT are at least that, "
        "the high-resolution subsets the any-size papers evaluate on; empty and repeated captions are skipped).",
        epilog="examples:\n"
        "  anysize eval manifest --coco annotations/captions_val2017.json --n 1000 --out coco1k.jsonl\n"
        "  anysize eval manifest --table laion-part-00000.parquet --min-side 1024 --n 1000 --out laion1k.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco", metavar="FILE", help="COCO captions JSON")
    src.add_argument("--table", metavar="FILE", help="caption table: .parquet (needs pyarrow), .csv, .tsv, .jsonl")
    c.add_argument("--column", default=None, help="caption column of --table (default: TEXT, caption, text or prompt)")
    c.add_argument("--min-side", type=int, default=0, metavar="PX",
                   help="--table only: keep rows whose WIDTH and HEIGHT are both >= PX (default: no filter)")
    c.add_argument("--n", type=int, default=1000, help="rows (default: 1000)")
    c.add_argument("--seed", type=int, default=0, help="which rows (default: 0)")
    c.add_argument("--out", default=None, help="the manifest (default: coco1k.jsonl / laion1k.jsonl for N=1000)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.set_defaults(func=cmd_eval_manifest)


def cmd_eval_manifest(args: argparse.Namespace) -> int:
    from .eval.metrics import coco_manifest, table_manifest, write_manifest
    from .output import check_writable, save_text

    if args.n <= 0:
        raise InvalidArgumentError(f"--n must be a positive integer, got {args.n}")
    if args.min_side < 0 or (args.min_side and args.coco):
        raise InvalidArgumentError("--min-side must be >= 0 and only applies to --table")
    if args.column is not None and args.coco:
        raise InvalidArgumentError("--column only applies to --table")
    n_label = f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n)
    out = args.out or f"{'coco' if args.coco else 'laion'}{n_label}.jsonl"
    check_writable(out, args.force)
    if args.coco:
        rows = coco_manifest(args.coco, args.n, args.seed)
    else:
        rows = table_manifest(args.table, args.n, args.seed, column=args.column, min_side=args.min_side)
    save_text(write_manifest(rows), out, force=args.force)
    print(out)
    return EXIT_OK


def cmd_eval_composition(args: argparse.Namespace) -> int:
    from . import methods
    from .toy.benchmark import composition_benchmark, format_table
    from .output import check_writable, save_json

    for m in args.method:
        check_choice("method", m, methods.names())
    options = parse_set(args.set)
    for m in args.method:
        methods.create(m, **options)
    sizes = [parse_size(s) for s in args.size] if args.size else [None]
    for v, name in ((args.n, "--n"), (args.batch, "--batch")):
        if v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    device = _check_model_options(args)
    _check_sizes(args, sizes)
    out = Path(args.out or f"anysize-eval-composition-{args.method[0]}-n{args.n}-s{args.seed}.json")
    if out.suffix.lower() != ".json":
        raise OutputError(f"--out {out} must end in .json")
    check_writable(out, args.force)
    results = []
    with _library_output(args.quiet):
        adapter = _load_model(args, device)
        for size in sizes:
            if size is not None:
                adapter.check_size(size[1], size[0])
        for m in args.method:
            for size in sizes:
                w, h = size if size is not None else (None, None)
                results.append(composition_benchmark(
                    adapter, method=m, width=w, height=h, n=args.n, seed=args.seed, prompt_seed=args.prompt_seed,
                    steps=args.steps, guidance=args.guidance, batch=args.batch, method_options=options,
                    progress=not args.quiet,
                ))
        save_json({"results": results}, out, force=args.force)
    print(format_table(results))
    print(out)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ bench


def _build_bench(sub) -> None:
    from .bench import ARCHITECTURES

    arch_lines = "\n".join(f"  {k:<7} {v}" for k, v in ARCHITECTURES.items())
    p = sub.add_parser(
        "bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="time every method on real architectures, as ratios to direct",
        description=f"""\
Time whole-image generation (prompt encoding, the denoising loop, VAE decode) of every registered
method, or --methods, for each architecture and size; report each method's median seconds per
image, its ratio to 'direct' measured in the same run, the network evaluations per image and the
peak memory (CUDA allocator on a GPU, process RSS on a CPU). Methods alternate run by run after
one warm-up each, so machine drift cancels in the ratios.

architectures (all but toy: the real denoiser configuration with random weights, built offline;
text encoders and VAE are one-layer stand-ins with the real widths, so the denoiser dominates):
{arch_lines}

--depth reduced keeps every width but cuts the depth (U-Nets: 1 layer per block; SD3: 2 blocks;
FLUX: 1+2 blocks) so a CPU can run it; auto = reduced on a CPU, full on a GPU.""",
        epilog="""\
examples:
  anysize bench --arch toy --size native 2x --steps 4
  anysize bench --arch sd1.5 sdxl sd3 flux --size native 2x --steps 10 --device cuda --dtype fp16
  anysize bench --arch sd1.5 --size 256x256 --depth reduced --steps 2 --repeats 2 --out bench.json
""",
    )
    p.add_argument("--arch", nargs="+", default=["toy"], metavar="NAME", help="architectures (default: toy)")
    p.add_argument("--size", nargs="+", default=["native"], metavar="S",
                   help="sizes: native, a scale of the native side like 2x, or WxH (default: native)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="methods (default: every registered method; direct is always included)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default: 4)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per method first (default: 1)")
    p.add_argument("--depth", default="auto", metavar="D", help="auto, full or reduced (default: auto)")
    p.add_argument("--dtype", metavar="T", default="fp32", help="fp32, fp16, bf16 (default: fp32)")
    p.add_argument("--device", metavar="DEV", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--out", default="anysize-bench.json",
                   help="JSON results; a Markdown table goes beside it as .md (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress notes")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, methods
    from .bench import ARCHITECTURES
    from .models import DTYPES
    from .output import check_writable, save_json, save_text

    for a in args.arch:
        check_choice("architecture", a, ARCHITECTURES)
    for m in args.methods or ():
        check_choice("method", m, methods.names())
    for s in args.size:
        bench.parse_bench_size(s)
    for v, name in ((args.steps, "--steps"), (args.repeats, "--repeats")):
        if v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    if args.warmup < 0:
        raise InvalidArgumentError(f"--warmup must be >= 0, got {args.warmup}")
    check_choice("depth", args.depth, ("auto", "full", "reduced"))
    check_choice("dtype", args.dtype, DTYPES)
    device = check_device(args.device or default_device(), "none")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise OutputError(f"--out {out} must end in .json")
    md = out.with_suffix(".md")
    check_writable(out, args.force)
    check_writable(md, args.force)
    import torch

    reduced = args.depth == "reduced" or (args.depth == "auto" and torch.device(device).type == "cpu")
    with _library_output(True):
        report = bench.bench(
            args.arch, sizes=args.size, methods=args.methods, steps=args.steps, guidance=args.guidance,
            repeats=args.repeats, warmup=args.warmup, reduced=reduced, device=device, dtype=DTYPES[args.dtype],
            seed=args.seed, progress=None if args.quiet else (lambda msg: _note(False, f"bench {msg}")),
        )
    table = bench.format_table(report)
    save_json(report, out, force=args.force)
    save_text(table + "\n", md, force=args.force)
    print(table)
    print(out)
    print(md)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ train-arad


def _build_train_arad(sub) -> None:
    from .buckets import PAPER_BUCKETS, RULES
    from .train.arad import DEFAULT_TARGETS, MIXED_PRECISION, AradConfig

    d = AradConfig(data="", out="")
    table = ", ".join(str(b) for b in PAPER_BUCKETS)
    p = sub.add_parser(
        "train-arad", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fine-tune a LoRA on multi-aspect images (ARAD, Any-Size-Diffusion stage I)",
        description=f"""\
Fine-tune an SD 1.x / 2.x / SDXL model with a LoRA on image-caption pairs of many aspect ratios
(ARAD, Algorithm 1 of the Any-Size-Diffusion paper), so it composes well at non-square sizes.

Each image goes to the ratio-size bucket nearest its height/width ratio (default: the paper's
nine, scaled from a 512-px model to the model's native side:
  {table}),
is resized to cover it and cropped to it (random crop), and every batch holds one bucket. Defaults are the paper's
(Adam, lr 1e-4, batch 8, 10000 steps, constant LR) with LoRA rank 4 on the attention projections.

DATA is a folder of images with sidecar captions (cat.png + cat.txt, recursive) or a .jsonl/.csv
manifest with an image path (image / file_name / path, relative to the manifest) and a caption
(caption / text / prompt), optionally width/height. Unreadable images, missing captions and
images below --min-side are skipped and counted, never fatal.

Checkpoints (LoRA + optimizer + step) go to OUT/checkpoints every --checkpoint-every steps; running
the same command again resumes from the latest one, exactly (batches, crops, noise and caption
dropout depend only on the seed and the step). The result, OUT/pytorch_lora_weights.safetensors,
is a diffusers LoRA: pipe.load_lora_weights(OUT), or anysize generate --method asd --lora OUT.

Several GPUs or nodes: run it through accelerate (distributed data parallel; --batch is per GPU):
  accelerate launch --multi_gpu --num_processes 8 -m anysize train-arad DATA --model M --out OUT
  accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --num_processes 16 \\
      -m anysize train-arad DATA --model M --out OUT
  torchrun --nproc_per_node 4 -m anysize train-arad DATA --out OUT --device cpu   # CPU processes (gloo)""",
        epilog="""\
examples:
  anysize train-arad data/laion-aesthetic --model stabilityai/stable-diffusion-2-1-base --out arad-sd21 \\
      --mixed-precision fp16
  anysize train-arad toy-multi --out arad-toy --steps 600 --batch 8     # the embedded toy model, on a CPU
""",
    )
    p.add_argument("data", help="image folder with .txt captions, or a .jsonl/.csv manifest")
    p.add_argument("--out", required=True, help="output folder (LoRA, checkpoints, log)")
    _add_model_options(p)
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per step per GPU (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate, constant (default: %(default)s)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="U-Net modules that get LoRA, comma-separated (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps (default: 1)")
    p.add_argument("--mixed-precision", default=d.mixed_precision, metavar="P",
                   help=f"{', '.join(MIXED_PRECISION)} (default: %(default)s; fp16/bf16 on a GPU)")
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                   help="share of empty captions, for classifier-free guidance (default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm, 0 = off (default: %(default)s)")
    p.add_argument("--buckets", default=None, metavar="WxH,...",
                   help="your own buckets in pixels, e.g. 512x512,768x512,512x768 (default: the paper's nine, scaled)")
    p.add_argument("--bucket-rule", default=d.bucket_rule, metavar="R",
                   help=f"{', '.join(RULES)}: nearest H/W ratio (paper, Algorithm 1) or nearest log-ratio (default: %(default)s)")
    p.add_argument("--min-side", type=int, default=None, metavar="PX",
                   help="skip images whose shorter side is below PX (default: half the native side)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps (default: %(default)s)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest kept (default: %(default)s)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has checkpoints")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the whole run (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="image-loading processes (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu to force the CPU (default: what accelerate picks)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_arad)


def cmd_train_arad(args: argparse.Namespace) -> int:
    from .train.arad import AradConfig, parse_targets, train_arad

    if args.device not in (None, "cpu"):
        raise InvalidArgumentError("--device takes only 'cpu'; GPUs are chosen by accelerate (accelerate launch / CUDA_VISIBLE_DEVICES)")
    cfg = AradConfig(
        data=args.data, out=args.out, model=args.model, family=args.family, steps=args.steps, batch=args.batch, lr=args.lr,
        rank=args.rank, alpha=args.alpha, targets=parse_targets(args.targets), grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision, caption_dropout=args.caption_dropout, grad_clip=args.grad_clip,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        buckets=args.buckets, bucket_rule=args.bucket_rule, min_side=args.min_side, workers=args.workers,
        device=args.device, resume=not args.no_resume, progress=not args.quiet,
    )
    cfg.validate()
    if not Path(args.data).exists():
        raise InvalidArgumentError(f"dataset {args.data} does not exist")
    with _library_output(True):
        lora = train_arad(cfg)
    print(lora)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ main

#: subcommand name -> builder(subparsers) that adds its parser and sets ``func``
COMMANDS: dict[str, Callable[[Any], None]] = {
    "generate": _build_generate,
    "upscale": _build_upscale,
    "methods": _build_methods,
    "demo": _build_demo,
    "eval": _build_eval,
    "bench": _build_bench,
    "train-arad": _build_train_arad,
}


def _version() -> str:
    try:
        import diffusers
        import torch

        return f"{PROG} {__version__} (diffusers {diffusers.__version__}, torch {torch.__version__})"
    except ImportError:  # pragma: no cover
        return f"{PROG} {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Make any pretrained text-to-image diffusion model (SD 1.x/2.x, SDXL, SD3, FLUX) "
        "generate at any size and aspect ratio.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for build in COMMANDS.values():
        build(sub)
    return parser


def _fix_negative_sizes(argv: list[str]) -> list[str]:
    """``--size -8x128`` would read as an unknown option; pass it on as ``--size=-8x128`` for a clear error."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--size" and i + 1 < len(argv) and re.match(r"^-\d", argv[i + 1]):
            out.append(f"--size={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = _fix_negative_sizes(list(sys.argv[1:] if argv is None else argv))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            return _error(f"no command given; choose one of: {', '.join(COMMANDS)} (see '{PROG} --help')")
        return args.func(args)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else _error(str(e.code)))
    except _UsageError as e:
        return _error(str(e))
    except AnysizeError as e:
        return _error(str(e))
    except (KeyboardInterrupt, Cancelled):
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `anysize methods | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``anysize upscale``: enlarge an image SDEdit-style with a tiled method, or with the SD x4 upscaler."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import InvalidArgumentError, OutputError, check_choice
from ..lora import cli_loras
from .console import EXIT_OK, library_output, note
from .controls import add_control_options, parse_controls
from .inputs import check_text_option, parse_set, parse_size
from .methods import method_lines, refining_methods
from .outputs import check_out_given
from .regions import add_region_options, read_regions
from .model_options import (
    TILED_VAE_MODES, add_model_options, add_runtime_options, check_model_options, check_run_options, check_sizes,
    load_model, scheduler_help,
)

HELP = "enlarge an image with a tiled method (SDEdit-style)"

DESCRIPTION = """\
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
"""

EPILOG = """\
examples:
  anysize upscale photo.png --scale 4 --method fstd --strength 0.4 --prompt "high quality, detailed"
  anysize upscale photo.png --scale 4 --controlnet lllyasviel/control_v11f1e_sd15_tile --control-scale 0.6
  anysize upscale photo.png --size 4096x2048 --method multidiffusion --model stabilityai/stable-diffusion-2-1-base \\
      --dtype fp16 --device cuda --out big.png
  anysize upscale room.png --scale 2 --prompt "high quality" --region "0,0,512,512:a detailed oil painting"
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION + "\n".join(method_lines(refining_methods()))
    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("image", metavar="IMAGE",
                   help="the image to enlarge (any format Pillow reads; EXIF orientation applied, 16-bit and float "
                   "images scaled, alpha composited over white)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--scale", type=float, metavar="S", default=None, help="enlarge each side S times (> 0)")
    target.add_argument("--size", metavar="WxH", default=None, help="the exact output size in pixels")
    p.add_argument("--method", metavar="NAME", default="fstd",
                   help=f"tiled method: {', '.join(refining_methods())} (default: fstd)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable); VALUE is read as JSON when it parses, else as text")
    p.add_argument("--lora", metavar="PATH[:SCALE]", action="append", default=[],
                   help="a LoRA for the whole run (repeatable): a .safetensors file or a folder "
                   "diffusers' load_lora_weights reads, and its weight after the last ':' (default 1), e.g. "
                   "style.safetensors:0.8; the PNG records its file, SHA-256 and weight")
    p.add_argument("--strength", type=float, metavar="X", default=None,
                   help="img2img strength in (0, 1]: the fraction of the schedule re-run (default: 0.4; 1 for the "
                   "x4 upscaler, which starts from noise conditioned on the image)")
    p.add_argument("--noise-level", type=int, metavar="N", default=None,
                   help="x4 upscaler only: noise added to the low-res image, 0-350 (default: 20)")
    p.add_argument("--prompt", default="", help="prompt of every tile (default: empty)")
    p.add_argument("--negative", metavar="TEXT", default=None, help="negative prompt")
    add_model_options(p)
    add_region_options(p, upscale=True)
    p.add_argument("--steps", type=int, metavar="N", default=None,
                   help="steps of the full schedule; about strength x N run (default: the model's)")
    p.add_argument("--guidance", type=float, metavar="G", default=None,
                   help="classifier-free guidance scale (default: the model's; 1, i.e. none, without a prompt)")
    p.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (default: 0)")
    p.add_argument("--scheduler", metavar="NAME", default="default", help=scheduler_help())
    add_control_options(p, upscale=True)
    add_runtime_options(p)
    p.add_argument("--tiled-vae", metavar="MODE", default="auto",
                   help=f"{', '.join(TILED_VAE_MODES)}: as in 'anysize generate' (default: auto, tiled above "
                   "2048x2048 px)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="the PNG file (default: <image name>-<method>-<W>x<H>-s<seed>.png in the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes; print only the path written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import api, methods
    from ..images import load_image
    from ..output import check_writable, save_png
    from ..sampling import check_strength
    from ..schedulers import make_scheduler

    quiet = args.quiet
    # ---- everything that can be checked without the model
    if args.scale is None and args.size is None:
        raise InvalidArgumentError("give the target as --scale S or --size WxH")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise InvalidArgumentError(f"--scale must be a number > 0, got {args.scale}")
    size = parse_size(args.size) if args.size is not None else None
    if args.method not in methods.names():
        check_choice("method", args.method, refining_methods())  # the choices are those that can upscale
    if not methods.get(args.method).refines:
        raise InvalidArgumentError(
            f"method {args.method!r} makes its own canvas in several stages and cannot upscale an image; "
            f"use one of: {', '.join(refining_methods())}"
        )
    options = parse_set(args.set)
    methods.create(args.method, **options)
    loras = cli_loras(args.lora)
    if args.strength is not None:
        check_strength(args.strength)
    tiled = check_run_options(args)
    check_text_option(args.prompt, "--prompt")
    check_text_option(args.negative, "--negative")
    device = check_model_options(args)
    source = load_image(args.image)  # unreadable or unconvertible images fail before the model loads
    check_sizes(args, [size])
    regions = read_regions(args, methods.get(args.method), size)
    controls = parse_controls(args, upscale=True)
    check_out_given(args.out)
    if args.out is not None and Path(args.out).suffix.lower() != ".png" and not Path(args.out).is_dir():
        raise OutputError(f"--out {args.out} must end in .png (anysize writes PNG files with their parameters)")

    with library_output(quiet):
        adapter = load_model(args, device)
        height, width, rounded = api.upscale_size(
            (source.height, source.width), adapter.size_multiple, scale=args.scale, size=size)
        if rounded:
            note(quiet, f"{source.width}x{source.height} x {args.scale:g} rounded to {width}x{height} "
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
            lora=loras, regions=regions,
            control=api.load_controls(adapter, controls) or None, control_guess_mode=args.control_guess_mode,
        )
        written = save_png(result.images[0], out, result.config_for(0), force=args.force)
    print(written, flush=True)
    return EXIT_OK

"""``anysize generate``: one PNG per prompt, at any size, with a registered method."""

from __future__ import annotations

import argparse
import textwrap

from ..errors import check_choice
from ..lora import cli_loras
from .console import EXIT_OK, library_output
from .controls import add_control_options, parse_controls
from .inputs import check_text_option, parse_set, parse_size, read_prompts
from .methods import method_lines
from .model_options import (
    TILED_VAE_MODES, add_model_options, add_runtime_options, check_model_options, check_run_options, check_seed,
    check_sizes, load_model, scheduler_help,
)
from .outputs import plan_outputs
from .regions import add_region_options, read_regions

HELP = "generate images from text prompts at any size"

EPILOG = """\
examples:
  anysize generate "a red triangle on a blue background" --size 256x128 --steps 20
  anysize generate "a castle on a cliff" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --size 4096x2048 --dtype fp16 --device cuda --out castle.png
  anysize generate --prompts-file prompts.txt --seed 100 --out batch/
  anysize generate "a white background" --size 256x128 --method multidiffusion \\
      --region "0,0,128,128:a red circle" --region "128,0,128,128:a blue square"
  anysize generate "a house" --size 2048x1024 --method fstd --controlnet lllyasviel/control_v11p_sd15_canny \
      --control-image edges.png --control-scale 0.8 --control-end 0.6
"""


def _default_model_paragraph() -> str:
    from ..toy.data import OBJECT_COLOURS, SHAPES

    return textwrap.fill(
        "Without --model the embedded default model is used: anysize's own toy model, an SD 1.5-structured "
        'pipeline trained on one coloured shape on a background ("a red triangle on a blue background"; '
        f"objects {', '.join(OBJECT_COLOURS[:-1])} or {OBJECT_COLOURS[-1]}; shapes {', '.join(SHAPES)}). "
        "It runs in about a second on a CPU and, like SD at 2x its native side, duplicates its object at "
        "larger sizes: the failure the methods are there to fix.", width=99)


def _description() -> str:
    from .. import methods
    from ..schedulers import scheduler_names

    return f"""\
Generate one PNG per prompt at any size, with a registered method.

Sizes are WIDTHxHEIGHT in pixels and must be multiples of the model's pixel factor: 8 for
SD 1.x/2.x and SDXL, 16 for SD3 and FLUX, 4 for the embedded toy model (e.g. 4096x2048). Without
--size the model's native size is used (1024x1024 for SDXL, 512x512 for SD 1.5, 128x128 for the
embedded default model).

{_default_model_paragraph()}

Every PNG carries an A1111-style "parameters" text chunk and an "anysize" JSON chunk with the full
configuration. Files are written atomically and never overwritten without --force.

methods (--method; options with --set KEY=VALUE, see 'anysize methods'):
""" + "\n".join(method_lines(methods.names())) + f"""

schedulers (--scheduler; default: the model's own):
  U-Net models (SD 1.x/2.x, SDXL): {', '.join(scheduler_names('diffusion'))}
  flow models (SD3, FLUX):         {', '.join(scheduler_names('flow'))}
"""


def configure(p: argparse.ArgumentParser) -> None:
    from .. import methods

    p.description, p.epilog, p.formatter_class = _description(), EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts (one image each)")
    p.add_argument("--prompts-file", metavar="FILE", help="more prompts, one per non-empty line ('-': stdin)")
    p.add_argument("--negative", metavar="TEXT", default=None, help="negative prompt (for every image)")
    add_model_options(p)
    p.add_argument("--size", metavar="WxH", default=None,
                   help="image size in pixels, multiples of the model's factor (default: the model's native size)")
    p.add_argument("--method", metavar="NAME", default="direct",
                   help=f"generation method: {', '.join(methods.names())} (default: direct)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable); VALUE is read as JSON when it parses, else as text")
    p.add_argument("--lora", metavar="PATH[:SCALE]", action="append", default=[],
                   help="a LoRA for the whole run, with any method (repeatable): a .safetensors file or a folder "
                   "diffusers' load_lora_weights reads, and its weight after the last ':' (default 1), e.g. "
                   "style.safetensors:0.8; the PNG records its file, SHA-256 and weight")
    add_region_options(p)
    p.add_argument("--steps", type=int, metavar="N", default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, metavar="G", default=None,
                   help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, metavar="S", default=0,
                   help="random seed; image i of several uses S + i (default: 0)")
    p.add_argument("--scheduler", metavar="NAME", default="default", help=scheduler_help())
    add_control_options(p)
    add_runtime_options(p)
    p.add_argument("--tiled-vae", metavar="MODE", default="auto",
                   help=f"{', '.join(TILED_VAE_MODES)}: decode in tiles with whole-image GroupNorm statistics to "
                   "bound memory; auto tiles above 2048x2048 px; on forces it (exact statistics, ~8x a plain decode); "
                   "fast estimates the statistics from a small pass (about the cost of a plain decode) (default: auto)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="one prompt: the PNG file (default: anysize-<method>-<W>x<H>-s<seed>.png); an existing "
                   "directory or a path ending in / gets the default name inside. Several prompts: a directory "
                   "(default: anysize-out/) with files NNN-s<seed>.png")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes; print only the paths written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import api, methods
    from ..output import check_writable, save_png
    from ..progress import run_progress
    from ..regions import check_regions
    from ..schedulers import make_scheduler

    quiet = args.quiet
    # ---- everything that can be checked without the model
    size = parse_size(args.size) if args.size is not None else None
    check_choice("method", args.method, methods.names())
    options = parse_set(args.set)
    methods.create(args.method, **options)  # unknown options / out-of-range values
    loras = cli_loras(args.lora)
    regions = read_regions(args, methods.get(args.method), size)
    tiled = check_run_options(args)
    device = check_model_options(args)
    prompts = read_prompts(args.prompts, args.prompts_file)
    check_seed(args.seed, len(prompts))  # image i uses seed + i
    check_text_option(args.negative, "--negative")
    check_sizes(args, [size])
    controls = parse_controls(args)
    outputs = plan_outputs(args.out, len(prompts), args.method, size, args.seed)
    for path in outputs or ():
        check_writable(path, args.force)

    # ---- the model
    with library_output(quiet):
        adapter = load_model(args, device)
        if size is None:
            height, width = adapter.native_size
        else:
            width, height = size
        adapter.check_size(height, width)
        if regions is not None:
            check_regions(regions, width, height)
        make_scheduler(adapter, args.scheduler)  # a flow scheduler on a U-Net model and the like
        controls = api.load_controls(adapter, controls)  # each ControlNet loaded once for every prompt
        if outputs is None:  # the default name needed the native size
            outputs = plan_outputs(args.out, len(prompts), args.method, (width, height), args.seed)
            for path in outputs:
                check_writable(path, args.force)

        # ---- the work: one image at a time, each saved as soon as it is done; one bar for them all
        negative = args.negative or None
        with run_progress(args.method, not quiet) as bar:
            for i, (prompt, path) in enumerate(zip(prompts, outputs)):
                if len(prompts) > 1:
                    bar.set_postfix(f"[{i + 1}/{len(prompts)}] {shorten(prompt)}")
                result = api.generate(
                    adapter, prompt, negative_prompt=negative, width=width, height=height, method=args.method,
                    steps=args.steps, guidance=args.guidance, seed=args.seed + i, scheduler=args.scheduler,
                    tiled_vae=tiled, progress=not quiet, method_options=options, lora=loras, regions=regions,
                    control=controls or None, control_guess_mode=args.control_guess_mode,
                )
                written = save_png(result.images[0], path, result.config_for(0), force=args.force)
                bar.print(written)
    return EXIT_OK


def shorten(text: str, limit: int = 40) -> str:
    """A prompt cut to fit beside the bar."""
    return text if len(text) <= limit else text[:limit - 1] + "…"

"""``anysize bench``: time every method on real architectures, as ratios to ``direct`` measured in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgumentError, OutputError, check_choice
from .console import EXIT_OK, library_output, note
from .model_options import DEFAULT_DEVICE_ORDER, add_speed_options, check_device, check_seed, default_device

HELP = "time every method on real architectures, as ratios to direct"

#: --depth: auto is reduced on a CPU, full on a GPU
DEPTHS = ("auto", "full", "reduced")

EPILOG = """\
examples:
  anysize bench --arch toy --size native 2x --steps 4
  anysize bench --arch sd1.5 sdxl sd3 flux --size native 2x --steps 10 --device cuda --dtype fp16
  anysize bench --arch sd1.5 --size 256x256 --depth reduced --steps 2 --repeats 2 --out bench.json
  anysize bench --arch toy --size 4x --methods direct --versus scalediff:demofusion   # one method vs another
  anysize bench --arch sdxl --size 4096x4096 --methods scalediff --no-baseline --steps 50 --vae released --device cuda
  anysize bench --arch toy --size 4x --methods scalediff --no-baseline --warmup-steps 2 --repeats 1
  anysize bench --arch sdxl --size 2x --methods direct fstd --device cuda --dtype bf16 --compile --warmup 2
"""


def configure(p: argparse.ArgumentParser) -> None:
    from ..bench import ARCHITECTURES
    from ..models import DTYPES

    arch_lines = "\n".join(f"  {k:<7} {v}" for k, v in ARCHITECTURES.items())
    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, EPILOG
    p.description = f"""\
Time whole-image generation (prompt encoding, the denoising loop, VAE decode) of every registered
method, or --methods, for each architecture and size; report each method's median seconds per
image, its ratio to 'direct' measured in the same run, the network evaluations per image and the
peak memory (CUDA allocator on a GPU, process RSS on a CPU). Methods alternate run by run after
one warm-up each, so machine drift cancels in the ratios. --no-baseline times only --methods (the
ratios to direct are then left out unless direct is one of them): for one method's absolute time
where a direct run at that size would cost more than the method itself.

architectures (all but toy: the real denoiser configuration with random weights, built offline;
text encoders and VAE are one-layer stand-ins with the real widths, so the denoiser dominates):
{arch_lines}

--depth reduced keeps every width but cuts the depth (U-Nets: 1 layer per block; SD3: 2 blocks;
FLUX: 1+2 blocks) so a CPU can run it; auto = reduced on a CPU, full on a GPU."""
    p.add_argument("--arch", nargs="+", default=["toy"], metavar="NAME", help="architectures (default: toy)")
    p.add_argument("--size", nargs="+", default=["native"], metavar="S",
                   help="sizes: native, a scale of the native side like 2x, or WxH (default: native)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="methods (default: every registered method; direct is always included, "
                        "unless --no-baseline)")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not add direct, the baseline of the ratios (no ratios unless direct is in --methods)")
    p.add_argument("--versus", nargs="+", default=[], metavar="A:B",
                   help="also give method A's time over method B's, both from the same rounds (added to --methods)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default: 4)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per method first (default: 1)")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help="denoising steps of the warm-up runs (default: --steps); a shorter warm-up at the same "
                        "size meets the same first-use costs, which are per tensor shape")
    p.add_argument("--vae", default="stand-in", metavar="V",
                   help="the VAE of the real architectures: stand-in (the builders' small one: the decode costs "
                        "almost nothing) or released (the released layout, 83.7M parameters, random weights: the "
                        "decode and encode cost what the real ones do) (default: stand-in)")
    p.add_argument("--depth", default="auto", metavar="D",
                   help=f"{', '.join(DEPTHS[:-1])} or {DEPTHS[-1]} (default: auto)")
    p.add_argument("--dtype", metavar="T", default="fp32", help=f"{', '.join(DTYPES)} (default: fp32)")
    p.add_argument("--device", metavar="DEV", default=None,
                   help=f"cpu, cuda, cuda:N, mps (default: {DEFAULT_DEVICE_ORDER})")
    add_speed_options(p)  # with --compile the warm-up runs compile, the timed runs are the compiled ones
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--out", default="anysize-bench.json",
                   help="JSON results; a Markdown table goes beside it as .md (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress notes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench, methods
    from ..bench import ARCHITECTURES
    from ..models import DTYPES, resolve_dtype
    from ..models.runtime import check_sdpa
    from ..output import check_writable, save_json, save_text

    for a in args.arch:
        check_choice("architecture", a, ARCHITECTURES)
    for m in args.methods or ():
        check_choice("method", m, methods.names())
    for s in args.size:
        bench.parse_bench_size(s)
    versus = [bench.parse_versus(v) for v in args.versus]
    for v, name in ((args.steps, "--steps"), (args.repeats, "--repeats")):
        if v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    if args.warmup < 0:
        raise InvalidArgumentError(f"--warmup must be >= 0, got {args.warmup}")
    if args.warmup_steps is not None and args.warmup_steps <= 0:
        raise InvalidArgumentError(f"--warmup-steps must be a positive integer, got {args.warmup_steps}")
    if args.no_baseline and not args.methods and not args.versus:
        raise InvalidArgumentError("--no-baseline needs --methods (or --versus): the methods to time without direct")
    check_seed(args.seed)
    check_choice("depth", args.depth, DEPTHS)
    check_choice("vae", args.vae, bench.VAES)
    if args.vae != "stand-in" and "toy" in args.arch:
        raise InvalidArgumentError("--vae released is for the real architectures; the toy model has its own trained VAE")
    check_choice("dtype", args.dtype, DTYPES)
    check_sdpa(args.sdpa)
    if args.compile and args.warmup < 1:
        raise InvalidArgumentError("--compile needs --warmup 1 or more: the first run of each shape compiles")
    device = check_device(args.device or default_device(), "none")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise OutputError(f"--out {out} must end in .json")
    md = out.with_suffix(".md")
    check_writable(out, args.force)
    check_writable(md, args.force)
    import torch

    reduced = args.depth == "reduced" or (args.depth == "auto" and torch.device(device).type == "cpu")
    with library_output(True):
        report = bench.bench(
            args.arch, sizes=args.size, methods=args.methods, steps=args.steps, guidance=args.guidance,
            repeats=args.repeats, warmup=args.warmup, reduced=reduced, device=device, dtype=resolve_dtype(args.dtype),
            seed=args.seed, versus=versus, baseline=not args.no_baseline, warmup_steps=args.warmup_steps, vae=args.vae,
            compile=args.compile, sdpa=args.sdpa, progress=None if args.quiet else (lambda msg: note(False, f"bench {msg}")),
        )
    table = bench.format_table(report)
    save_json(report, out, force=args.force)
    save_text(table + "\n", md, force=args.force)
    print(table)
    print(out)
    print(md)
    return EXIT_OK



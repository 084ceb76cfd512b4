"""``anysize demo``: every method at native size and beyond, on one labelled comparison sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgumentError, OutputError, check_choice
from .console import EXIT_OK, library_output
from .inputs import check_text_option
from .model_options import add_model_options, add_runtime_options, check_model_options, check_seed, load_model

HELP = "every method at native size and beyond, on one labelled comparison sheet"

EPILOG = """\
examples:
  anysize demo                                    # anysize-demo.png + anysize-demo.json
  anysize demo --prompt "a yellow star on a black background" --seed 3 --out star.png
  anysize demo --methods direct --steps 10        # quicker
"""


def configure(p: argparse.ArgumentParser) -> None:
    from ..toy.demo import COLUMNS, DEFAULT_PROMPT, DEMO_STEPS

    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, EPILOG
    p.description = f"""\
Generate a comparison sheet: one row per registered method, one column per size
({', '.join(c[0] for c in COLUMNS)} of the model's native size), each cell labelled with what
the composition analysis finds (number of prompted objects; does colour and shape match). The
figures also go to a JSON file. On the embedded toy model the whole sheet takes under a minute on
2 CPU cores, with one progress bar over the cells; 'direct' shows the seeds' failure (the object
duplicated at larger sizes)."""
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every cell (default: %(default)r)")
    p.add_argument("--seed", type=int, default=0, help="seed of every cell (default: 0)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps (default: {DEMO_STEPS}, or the model's default if lower — quick enough for "
                   "every row)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                   help="only these methods (default: every registered method that supports the model)")
    add_model_options(p)
    add_runtime_options(p)
    p.add_argument("--out", default="anysize-demo.png", help="the sheet (default: %(default)s)")
    p.add_argument("--json", default=None, help="the metrics (default: the sheet's name with .json)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import methods
    from ..output import check_writable, save_json, save_png
    from ..toy.demo import render_sheet, run_demo

    check_text_option(args.prompt, "--prompt")
    for m in args.methods or ():
        check_choice("method", m, methods.names())
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    check_seed(args.seed)
    device = check_model_options(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out {out} must end in .png")
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    if json_path.resolve() == out.resolve():  # the sheet would be written, then the metrics refused over it
        raise OutputError(f"--json {args.json} is the sheet's own file (--out); give the metrics another name")
    check_writable(out, args.force)
    check_writable(json_path, args.force)
    with library_output(True):  # the model loads without a bar of its own: the sheet has one, over its cells
        adapter = load_model(args, device)
    with library_output(args.quiet):
        result = run_demo(adapter, prompt=args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                          methods=args.methods, progress=not args.quiet)
        sheet = render_sheet(result, title=f"{args.prompt!r}  seed {args.seed}  {result.config['steps']} steps")
        save_png(sheet, out, {**result.config, "kind": "anysize demo sheet"}, force=args.force)
        save_json(result.records(), json_path, force=args.force)
    print(out)
    print(json_path)
    return EXIT_OK

"""``anysize eval``: composition on the toy world, FID/KID/IS/CLIP on a prompt manifest, plots, manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgumentError, OutputError, check_choice
from .console import EXIT_FAILED, EXIT_OK, PROG, error, library_output, note
from .inputs import parse_set, parse_size
from .model_options import (
    add_model_options, add_runtime_options, check_model_options, check_seed, check_sizes, load_model,
)

HELP = "evaluate methods: composition (toy world), metrics (FID/KID/IS/CLIP), plots"

def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Evaluate methods: composition on the toy world; FID/KID/IS/CLIP, time and memory "
                     "on a prompt manifest (metrics); quality-vs-time plots (plot); COCO manifests (manifest).")
    evsub = p.add_subparsers(dest="eval_command", metavar="WHAT", title="evaluations")
    _add_composition(evsub)
    _add_metrics(evsub)
    _add_plot(evsub)
    _add_manifest(evsub)
    p.set_defaults(func=lambda a: error(
        f"choose an evaluation: {', '.join(evsub.choices)} (see '{PROG} eval --help')"))


def _add_composition(evsub) -> None:
    c = evsub.add_parser(
        "composition", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="how often a method keeps one object, duplicates it, or loses it, at a size",
        description="""\
Generate N toy-world prompts ("a red triangle on a blue background", ...) with each method at each
size and count, by image analysis, the prompted objects in every image: the share with exactly one
object, with several (duplication, the seeds' failure mode), with none, and with the prompted
colour and shape. Prompt i is toy caption i (--prompt-seed), generated with seed S + i.
--method all runs every registered method that supports the model; with several methods and sizes
a second table gives, per method and size, the share with one object / with duplicates. A method
that cannot run at a size, or runs out of memory there, is a "not run" cell that says why, and the
others go on (exit code 1 if one failed during the run); the results file is saved after every
batch, and --resume runs only the images it lacks (with a larger --n, it grows the saved cells).""",
        epilog="""\
examples:
  anysize eval composition --method direct --size 128x128 256x256 --n 64 --seed 0
  anysize eval composition --method direct --size 256x128 --n 16 --out wide.json
  anysize eval composition --method all --size 256x256 512x512 256x128 128x256 --n 64   # the field's table
  anysize eval composition --method all --size 512x512 --n 64 --out field.json --resume  # go on after a stop
  anysize eval composition --method all --size 512x512 --n 128 --out field.json --resume # 64 more images per cell
""",
    )
    c.add_argument("--method", nargs="+", default=["direct"], metavar="NAME",
                   help="one or more methods, or 'all' (every method that supports the model)")
    c.add_argument("--size", nargs="+", default=None, metavar="WxH", help="one or more sizes (default: native)")
    c.add_argument("--n", type=int, default=64, help="images per method and size (default: 64)")
    c.add_argument("--seed", type=int, default=0, help="image i uses seed S + i (default: 0)")
    c.add_argument("--prompt-seed", type=int, default=0, help="which toy captions (default: 0)")
    c.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    c.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    c.add_argument("--batch", type=int, default=8, help="images per network call (default: 8)")
    c.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable)")
    add_model_options(c)
    add_runtime_options(c)
    c.add_argument("--out", default=None,
                   help="JSON results (default: anysize-eval-composition-<first method>-n<N>-s<S>.json)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.add_argument("--resume", action="store_true",
                   help="keep the cells (method x size) already measured in --out with the same settings and run "
                   "the others, failed ones included; the file is saved after every batch of images, so a long "
                   "table stopped part-way goes on from its last saved batch; a larger --n adds images to the saved cells")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(func=run_composition)


def run_composition(args: argparse.Namespace) -> int:
    from .. import methods
    from ..errors import AnysizeError
    from ..output import check_writable, save_json
    from ..progress import run_progress
    from ..toy.benchmark import cell_config, composition_benchmark, format_method_size_table, format_table

    for m in args.method:
        if m != "all":
            check_choice("method", m, methods.names() + ["all"])
    options = parse_set(args.set)
    for m in args.method:
        if m != "all":
            methods.create(m, **options)
    sizes = [parse_size(s) for s in args.size] if args.size else [None]
    for v, name in ((args.n, "--n"), (args.batch, "--batch")):
        if v <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {v}")
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    if args.resume and args.force:
        raise InvalidArgumentError("--resume keeps the cells already in --out, --force starts over: give one of them")
    check_seed(args.seed, args.n)  # image i uses seed + i
    device = check_model_options(args)
    check_sizes(args, sizes)
    out = Path(args.out or f"anysize-eval-composition-{args.method[0]}-n{args.n}-s{args.seed}.json")
    if out.suffix.lower() != ".json":
        raise OutputError(f"--out {out} must end in .json")
    earlier = _saved_cells(out) if args.resume and out.exists() else []
    check_writable(out, args.force or args.resume)
    results, failed = [], 0
    with library_output(args.quiet):
        adapter = load_model(args, device)
        for size in sizes:
            if size is not None:
                adapter.check_size(size[1], size[0])
        names = expand_methods(args.method, adapter.family)
        if options:  # --set with 'all': every method must take the options (error names the one that does not)
            for m in names:
                methods.create(m, **options)
        cells = [cell_config(adapter, method=m, width=(size or (None, None))[0], height=(size or (None, None))[1],
                             n=args.n, seed=args.seed, prompt_seed=args.prompt_seed, steps=args.steps,
                             guidance=args.guidance, method_options=options)
                 for m in names for size in sizes]
        kept, partial = _resumed(earlier, cells, out)  # cell index -> its saved result (checked before any work)
        refused = {}
        for k, c in enumerate(cells):  # a method that cannot run at a size is a 'not run' cell, named up front
            try:
                methods.create(c["method"], **options).check(adapter, c["height"], c["width"], c["steps"])
            except AnysizeError as e:
                refused[k] = str(e)
        if len(refused) == len(cells):
            raise InvalidArgumentError("no method can run at these settings: " + "; ".join(
                f"{cells[k]['method']} at {cells[k]['width']}x{cells[k]['height']}: {why}" for k, why in refused.items()))
        if kept or partial:
            note(args.quiet, f"--resume: {len(kept)} of {len(cells)} cells already in {out}"
                 + "".join(f"; {cells[k]['method']} at {cells[k]['width']}x{cells[k]['height']} goes on from image "
                           f"{len(r['partial']['images'])}" for k, r in partial.items()))
        saved = []

        def save(running=()):
            # after every cell and every batch, so a long table stopped part-way keeps what it measured
            # (and --resume goes on from there); the file is this run's own from the first save on
            reached = cells[:len(results) + len(running)]
            save_json({"results": results + list(running) + _not_reached(earlier, reached)}, out,
                      force=args.force or args.resume or bool(saved))
            saved.append(True)

        # one bar over the images of every cell still to run (each cell's run names it)
        todo = sum(args.n - len((partial[k].get("partial") or {}).get("images", ())) if k in partial else args.n
                   for k in range(len(cells)) if k not in kept and k not in refused)
        with run_progress("composition", not args.quiet, total=todo, unit="img", leave=True):
            for k, c in enumerate(cells):
                if k in kept:
                    results.append(kept[k])
                elif k in refused:
                    results.append({"config": c, "not_run": refused[k]})
                else:
                    try:
                        results.append(composition_benchmark(
                            adapter, method=c["method"], width=c["width"], height=c["height"], n=args.n,
                            seed=args.seed, prompt_seed=args.prompt_seed, steps=args.steps, guidance=args.guidance,
                            batch=args.batch, method_options=options, progress=not args.quiet,
                            resume_from=partial.get(k), on_batch=lambda cell: save([cell]),
                        ))
                    except AnysizeError as e:  # out of memory (or refused mid-run): this cell says so, the others run
                        failed += 1
                        why = e.for_cli() if callable(getattr(e, "for_cli", None)) else str(e)
                        results.append({"config": c, "not_run": f"failed during the run: {why}"})
                        note(False, f"{c['method']} at {c['width']}x{c['height']}: {results[-1]['not_run']}")
                save()
    print(format_table(results))
    if len({r["config"]["method"] for r in results}) > 1 and len(sizes) > 1:
        print()
        print(format_method_size_table(results))
    print(out)
    if failed:
        return error(f"{failed} of {len(cells)} cells failed during the run (see the table); rerun with --resume "
                     "to run only those", EXIT_FAILED)
    return EXIT_OK


#: what identifies a cell of ``eval composition``: a saved cell with the same values is the same work
CELL_KEYS = ("method", "width", "height")
CELL_SETTINGS = ("method_options", "n", "seed", "prompt_seed", "steps", "guidance", "model")


def _saved_cells(out: Path) -> list[dict]:
    import json

    try:
        results = json.loads(out.read_text(encoding="utf-8"))["results"]
        if not all(isinstance(r, dict) and isinstance(r.get("config"), dict) for r in results):
            raise ValueError("a result without its config")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"--resume: {out} is not an 'eval composition' results file ({e}); choose another --out "
                          "or pass --force to replace it") from None
    return results


def _resumed(earlier: list[dict], cells: list[dict], out: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """The cells of this run already measured in ``earlier`` and those stopped part-way (each by index
    in ``cells``); a saved cell of the same method and size measured with other settings is refused:
    mixing them would make one table of two experiments."""
    import json

    kept, partial = {}, {}
    for k, c in enumerate(cells):
        c = json.loads(json.dumps(c, default=str))  # as it would be saved (tuples as lists)
        for r in earlier:
            saved = r["config"]
            if tuple(saved.get(key) for key in CELL_KEYS) != tuple(c[key] for key in CELL_KEYS):
                continue
            if "not_run" in r:  # a cell that failed or was refused has no images: it runs again, at these settings
                continue
            differ = [key for key in CELL_SETTINGS if saved.get(key) != c[key]
                      and not (key == "model" and _same_model(saved.get(key), c[key]))]
            if differ == ["n"] and isinstance(saved.get("n"), int) and saved["n"] < c["n"]:
                # a larger --n grows the cell: image i does not depend on n, so the saved images are
                # the first ones of the larger cell and it goes on from the next
                partial[k] = {"config": c, "partial": r.get("partial") or _as_partial(r)}
                continue
            if differ:
                raise InvalidArgumentError(
                    f"--resume: {out} has {c['method']} at {c['width']}x{c['height']} with other settings ("
                    + ", ".join(f"{key} {saved.get(key)!r}, now {c[key]!r}" for key in differ)
                    + "); choose another --out, or pass --force to start over")
            if "partial" in r:  # stopped between two batches: goes on from the next image
                partial[k] = r
            else:
                kept[k] = r
    return kept, partial


def _as_partial(result: dict) -> dict:
    """A finished cell as the partial cell its images begin (its time back as seconds in all)."""
    summary = result["summary"]
    return {"images": result["images"], "network_calls": summary["network_calls"],
            "seconds": summary["seconds_per_image"] * len(result["images"])}


def _same_model(saved, now) -> bool:
    """The embedded default model is the same model wherever the package lies: a table saved on
    another machine (a GPU run's checkout) names it by that machine's path."""
    from ..defaults import default_model_path

    default = default_model_path()
    return isinstance(saved, str) and now == str(default) and Path(saved).parts[-3:] == default.parts[-3:]


def _not_reached(earlier: list[dict], reached: list[dict]) -> list[dict]:
    """The saved cells this run has not come to yet, and those of methods or sizes it does not ask
    for: kept in the file as they were, so a run stopped early loses none of them."""
    done = {tuple(c[key] for key in CELL_KEYS) for c in reached}
    return [r for r in earlier if tuple(r["config"].get(key) for key in CELL_KEYS) not in done]


def expand_methods(requested: list[str], family: str) -> list[str]:
    """The methods to run: 'all' is every registered method that supports ``family`` (registry order);
    repeats are dropped, the order kept."""
    from .. import methods

    able = [n for n in methods.names() if not methods.get(n).families or family in methods.get(n).families]
    out: list[str] = []
    for m in requested:
        for name in able if m == "all" else [m]:
            if name not in out:
                out.append(name)
    return out


def _add_metrics(evsub) -> None:
    from ..eval.protocol import CLIP_MODEL, METRICS

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
    add_model_options(c)
    add_runtime_options(c)
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
    c.set_defaults(func=run_metrics)


def run_metrics(args: argparse.Namespace) -> int:
    from .. import methods
    from ..eval import metrics as M
    from ..eval.run import markdown_header, markdown_row, plan_metrics, run_eval

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
    device = check_model_options(args)
    check_sizes(args, [size])
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
    with library_output(quiet):
        adapter = load_model(args, device) if need_model else None
        width, height = (size if size is not None else (None, None))
        if adapter is not None and size is not None:
            adapter.check_size(height, width)
        summary = run_eval(
            args.out, adapter=adapter, manifest=args.prompts, limit=args.limit, method=args.method, width=width,
            height=height, steps=args.steps, guidance=args.guidance, method_options=options, from_dir=args.from_dir,
            reference=args.reference, base_dir=args.base_dir, metrics=requested, crops=args.crops,
            crop_size=args.crop_size, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
            clip_model=args.clip_model, inception_weights=args.inception_weights, warmup=args.warmup, force=args.force, progress=not quiet,
            note=lambda msg: note(quiet, msg),
        )
    print(markdown_header())
    print(markdown_row(summary))
    for f in summary["files"].values():
        print(f)
    return EXIT_OK


def _add_plot(evsub) -> None:
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
    c.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from ..eval.metrics import METRICS
    from ..eval.plots import load_runs, quality_time_scatter
    from ..output import _write_atomically, check_writable

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


def _add_manifest(evsub) -> None:
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
    c.set_defaults(func=run_manifest)


def run_manifest(args: argparse.Namespace) -> int:
    from ..eval.metrics import coco_manifest, table_manifest, write_manifest
    from ..output import check_writable, save_text

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

"""``anysize batch``: every job of a JSONL/CSV/prompt file into a directory, resumable and splittable."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidArgumentError, check_choice
from .console import EXIT_FAILED, EXIT_OK, PROG, library_output, note
from .inputs import check_text_option, parse_set, parse_size
from .model_options import (
    TILED_VAE_MODES, add_model_options, add_runtime_options, check_model_options, check_seed,
    default_device, load_model, scheduler_help,
)

HELP = "run a file of generation jobs into a directory (resumable; torchrun/accelerate/srun/Ray)"

#: the exit code when the run finished but some jobs failed (run time, or --skip-invalid rows)

ENGINES = ("local", "ray")

DESCRIPTION = """\
Run every job of JOBS and write DIR/<id>.png (the same metadata as 'anysize generate') and
DIR/<id>.json (the job and its full config) per job, and DIR/summary.jsonl: one record per job with
its status (done, failed, pending), error, seconds, network calls and the rank that ran it.

JOBS is JSONL (.jsonl: one object per line), JSON (.json: an array of job objects), CSV (.csv: a
header row, options as a JSON cell) or a plain prompt file (one prompt per line). Fields: id, prompt, negative, seed, size (WxH) or
width/height, method, options, steps, guidance, scheduler, lora ("PATH[:SCALE]", or a list of such
strings and {"path": ..., "scale": ...} objects; in CSV the text or a JSON list; any method), regions
(a list of regional prompts, e.g. [{"box": [0, 0, 128, 128], "prompt": "a red circle"}], as in
'anysize generate --regions'). A field a row leaves out takes the flag's value below; a missing seed
is --seed + the job's row index (0-based). A job's id is its 'id' field or a hash of its whole
configuration.

Every row is checked before any work (fields, sizes, method options, model/method fit) and all bad
rows are reported at once with their row numbers; --skip-invalid runs the others and records the
bad ones as failed. Rerunning the same command skips the jobs whose files are complete and redoes
the rest: a kill at any moment loses at most the jobs in flight, and the files come out
byte-identical to an uninterrupted run.

Jobs of one configuration (method, options, size, steps, guidance, scheduler, LoRAs) share network
calls, --batch at a time. Launched by torchrun, accelerate launch or srun (RANK/WORLD_SIZE or
SLURM_PROCID/SLURM_NTASKS), each process runs its own deterministic share; --engine ray runs the
jobs on a Ray actor pool instead. The files do not depend on the number of processes, but CPU
results do depend on the number of threads: --threads pins it (default 1, what torchrun gives each
rank), so a one-process run and a many-process run write the same bytes.
"""

EPILOG = """\
examples:
  anysize batch jobs.jsonl --out runs/jobs --batch 4
  anysize batch prompts.txt --out runs/wide --size 2048x1024 --method fstd --seed 100
  torchrun --nproc-per-node 8 -m anysize batch jobs.jsonl --out runs/jobs --batch 4 --device cuda
  accelerate launch -m anysize batch jobs.jsonl --out runs/jobs --batch 4
  anysize batch jobs.jsonl --out runs/jobs --engine ray --workers 8 --worker-gpus 1
"""


def configure(p: argparse.ArgumentParser) -> None:
    from .. import methods

    p.description, p.epilog, p.formatter_class = DESCRIPTION, EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("jobs", metavar="JOBS", help="the jobs: a .jsonl, .json, .csv or plain prompt file")
    p.add_argument("--out", metavar="DIR", required=True, help="the directory of the jobs' files (created if needed)")
    add_model_options(p)
    add_runtime_options(p)
    d = p.add_argument_group("job defaults (for the fields a row leaves out)")
    d.add_argument("--negative", metavar="TEXT", default=None, help="negative prompt")
    d.add_argument("--seed", type=int, metavar="S", default=0, help="job i without a seed uses S + i (default: 0)")
    d.add_argument("--size", metavar="WxH", default=None, help="image size (default: the model's native size)")
    d.add_argument("--method", metavar="NAME", default="direct",
                   help=f"generation method: {', '.join(methods.names())} (default: direct)")
    d.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a method option (repeatable), under each row's options")
    d.add_argument("--lora", metavar="PATH[:SCALE]", action="append", default=None,
                   help="a LoRA of every job whose row has no 'lora' (repeatable; PATH[:SCALE] as in 'anysize generate')")
    d.add_argument("--steps", type=int, metavar="N", default=None, help="denoising steps (default: the model's)")
    d.add_argument("--guidance", type=float, metavar="G", default=None, help="guidance scale (default: the model's)")
    d.add_argument("--scheduler", metavar="NAME", default=None, help=scheduler_help())
    r = p.add_argument_group("running")
    r.add_argument("--batch", type=int, metavar="N", default=1,
                   help="jobs of one configuration per network call (default: 1)")
    r.add_argument("--tiled-vae", metavar="MODE", default="auto",
                   help=f"{', '.join(TILED_VAE_MODES)} (as 'anysize generate'; default: auto)")
    r.add_argument("--threads", type=int, metavar="N", default=1,
                   help="CPU threads per process; results on the CPU depend on it, so keep it the same "
                   "across runs that must match byte for byte (default: 1)")
    r.add_argument("--skip-invalid", action="store_true", help="run the valid jobs and record the invalid ones as failed")
    r.add_argument("--fail-fast", action="store_true", help="stop at the first job that fails at run time")
    r.add_argument("--engine", metavar="NAME", default="local",
                   help="local (this process, or one rank of torchrun/accelerate/srun) or ray (an actor pool; "
                   "needs 'pip install anysize[ray]') (default: local)")
    r.add_argument("--workers", type=int, metavar="N", default=None,
                   help="ray: actors, each holding the model (default: the cluster's GPUs, else 1)")
    r.add_argument("--worker-gpus", type=float, metavar="G", default=None,
                   help="ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    r.add_argument("--worker-cpus", type=float, metavar="C", default=1, help="ray: CPUs per actor (default: 1)")
    r.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="ray: the cluster to join (default: $RAY_ADDRESS, else a new local one bound to 127.0.0.1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes")
    p.set_defaults(func=run)


def _defaults(args) -> dict:
    size = args.size
    if size is not None:
        parse_size(size)
    check_text_option(args.negative, "--negative")
    out = {"seed": args.seed, "method": args.method, "options": parse_set(args.set)}
    for name in ("negative", "size", "lora", "steps", "guidance", "scheduler"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    import os

    from .. import methods
    from ..batching import InvalidJobsError, finish_checks, read_jobs, world_from_env
    from ..batching.store import check_out_dir

    quiet = args.quiet
    # ---- everything that can be checked without the model
    check_choice("engine", args.engine, ENGINES)
    check_choice("method", args.method, methods.names())
    for value, name in ((args.batch, "--batch"), (args.threads, "--threads"), (args.workers, "--workers")):
        if value is not None and value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value}")
    for value, name in ((args.worker_gpus, "--worker-gpus"), (args.worker_cpus, "--worker-cpus")):
        if value is not None and not value >= 0:
            raise InvalidArgumentError(f"{name} must be a number >= 0, got {value}")
    if args.engine != "ray" and (args.workers is not None or args.worker_gpus is not None
                                 or args.ray_address is not None):
        raise InvalidArgumentError("--workers, --worker-gpus and --ray-address go with --engine ray")
    TILED_VAE_MODES[check_choice("tiled-vae mode", args.tiled_vae, TILED_VAE_MODES)]
    if args.steps is not None and args.steps <= 0:
        raise InvalidArgumentError(f"--steps must be a positive integer, got {args.steps}")
    check_seed(args.seed)
    world = world_from_env()
    if args.engine == "ray" and world.size > 1:
        raise InvalidArgumentError(f"--engine ray runs the whole batch from one process, but {world.source} say "
                                   f"{world.size} processes; launch it once, without torchrun/accelerate/srun")
    if args.engine == "ray":
        from ..batching.ray_engine import require_ray

        require_ray()
    if args.device is None and world.size > 1:
        dev = default_device()
        args.device = f"cuda:{world.local_rank}" if dev == "cuda" else dev
    device = check_model_options(args)
    defaults = _defaults(args)
    parsed, errors = read_jobs(args.jobs, defaults)
    out = check_out_dir(args.out)
    tiled = TILED_VAE_MODES[args.tiled_vae]
    total = len(parsed) + len(errors)

    def report(jobs, errs):
        if errs and not args.skip_invalid:
            raise InvalidJobsError(errs, args.jobs, total)
        if errs:
            note(quiet, f"{len(errs)} of {total} jobs are invalid and recorded as failed: {errs[0]}")

    with library_output(quiet):
        if args.engine == "ray":
            from ..batching.ray_engine import run_ray

            result = run_ray(
                parsed, errors, out, load={"model": args.model, "family": args.family, "dtype": args.dtype,
                                           "device": args.device, "offload": args.offload,
                                           "compile": args.compile, "sdpa": args.sdpa},
                batch=args.batch, workers=args.workers, worker_gpus=args.worker_gpus, worker_cpus=args.worker_cpus,
                address=args.ray_address or os.environ.get("RAY_ADDRESS"), threads=args.threads,
                fail_fast=args.fail_fast, progress=not quiet, tiled_vae=tiled, report=report,
                note=lambda m: note(quiet, m))
        else:
            import torch

            from ..batching.runner import run_local

            torch.set_num_threads(args.threads)
            adapter = load_model(args, device)
            jobs, errors = finish_checks(adapter, parsed, errors, out)
            report(jobs, errors)
            if world.size > 1:
                note(quiet, f"rank {world.rank} of {world.size} ({world.source})")
            result = run_local(adapter, jobs, errors, out, batch=args.batch, world=world, fail_fast=args.fail_fast,
                               progress=not quiet, tiled_vae=tiled, note=lambda m: note(quiet, m))
    summary = out / "summary.jsonl"
    note(quiet, f"{result.done} done, {result.failed} failed, {result.pending} pending of {len(result.records)} "
                f"jobs (this process: {result.ran} run, {result.skipped} already complete); {summary}")
    if result.failed_here or result.stopped or result.invalid:
        failed = result.failed_here + result.invalid
        print(f"{PROG}: {failed} job{'s' if failed != 1 else ''} failed{' (stopped by --fail-fast)' if result.stopped else ''}; "
              f"see {summary}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK

"""Peak memory of one generation per method at a large size, decode included, and of one large
``fstd`` upscale (issue 23, goal 5: an 8192² SDXL-architecture image in fp16 with fstd,
multidiffusion, scalediff and asd within 24 GB of CUDA allocator peak; a 16384² fstd upscale that
completes).

One process, one model (``anysize.bench.build_adapter``: the real denoiser with random weights;
``--vae released`` swaps the builders' small stand-in VAE for a random VAE of the released
layout, so the decode's working set is the real one's). Each row runs in a fresh state: Python
garbage collected and the CUDA cache emptied, then the peak is measured over the one call by
:class:`anysize.eval.timing.PeakMemory` (``torch.cuda.max_memory_allocated`` after a reset; the
reserved peak ``max_memory_reserved`` beside it). On a CPU the figure is the process's peak RSS
instead (reset per row on Linux), which includes the weights.

A row is one ``anysize.generate`` (``output_type="pil"``, so the decoded image and its 8-bit copy
are in the peak) or one ``anysize.upscale`` from a random source image (seeded) to ``--upscale-to``.
The step count hardly matters: the peak is the working set of one network call (one tile batch,
or the whole canvas for scalediff's last stage) plus the canvas-sized buffers, which every step
reuses; 2 steps are enough for every method to run each of its stages (asd and scalediff run their
second stage for 1 step of 2). An out-of-memory error (or anysize's refusal of a size that cannot
fit) becomes the row's ``error``, and the next row starts clean.

    python benchmarks/gpu_memory/gpu_memory.py --arch toy --size 512x512 --steps 2 \\
        --upscale-to 1024x1024 --upscale-from 256 --out benchmarks/gpu_memory/gpu_memory_cpu_toy.json
    python benchmarks/gpu_memory/gpu_memory.py --arch sdxl --size 8192x8192 --dtype fp16 --vae released \\
        --tiled-vae fast --set multidiffusion.stride=128 --device cuda --out /tmp/memory_8192.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from anysize import api  # noqa: E402
from anysize import bench as _bench  # noqa: E402
from anysize import methods as registry  # noqa: E402
from anysize.cli.inputs import parse_set  # noqa: E402
from anysize.errors import AnysizeError, InvalidArgumentError  # noqa: E402
from anysize.devices import is_out_of_memory  # noqa: E402
from anysize.eval.timing import PeakMemory, _status_kb, machine, synchronize  # noqa: E402

PROMPT = _bench.BENCH_PROMPT
DEFAULT_METHODS = ("fstd", "multidiffusion", "scalediff", "asd")


def fresh(device: torch.device) -> None:
    """Free what the last row left: Python garbage, then the CUDA allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


def in_use_mib(device: torch.device) -> float:
    """Memory held now: CUDA allocated bytes, or the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return (_status_kb("VmRSS") or 0) / 1024


def measure(device: torch.device, what: str, call) -> dict:
    """Run ``call()`` in a fresh state under :class:`PeakMemory`; an OOM or a refused size is the row's error."""
    fresh(device)
    before = in_use_mib(device)
    row: dict = {"what": what, "in_use_before_mib": round(before, 1)}
    error = None
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        try:
            result = call()
            synchronize(device)
            row["network_calls"] = result.network_calls
            row["image_size"] = list(result.image.size)
            del result
        except Exception as e:  # noqa: BLE001 -- only OOM and refusals become rows; the rest re-raised below
            if not (is_out_of_memory(e) or isinstance(e, AnysizeError)):
                raise
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            del e  # the traceback holds the frames' tensors: drop it before freeing
        seconds = time.perf_counter() - t0
    row["seconds"] = round(seconds, 2)
    row["peak_mib"] = round(mem.peak_mib, 1)
    row["peak_kind"] = mem.kind
    row["peak_reset"] = mem.reset
    row["growth_mib"] = round(mem.peak_mib - before, 1)
    if device.type == "cuda":
        row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    row["error"] = error
    fresh(device)
    return row


def random_image(side: int, seed: int):
    """A seeded random RGB image (the source of the upscale: its content does not change the memory)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def method_options(items) -> dict[str, dict]:
    """``--set METHOD.KEY=VALUE`` -> {method: {key: value}}."""
    out: dict[str, dict] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot or method not in registry.METHODS:
            raise InvalidArgumentError(f"--set expects METHOD.KEY=VALUE with a registered method, got {item!r}")
        out.setdefault(method, {}).update(parse_set([rest]))
    return out


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT")
    return int(w), int(h)


def format_table(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    cuda = "gpu" in mach
    kind = "CUDA allocator peak" if cuda else "process peak RSS"
    head = ["run", "size", f"{kind} (MiB)", "reserved peak (MiB)" if cuda else "RSS before (MiB)", "growth (MiB)",
            "seconds", "network calls", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        second = r.get("peak_reserved_mib") if cuda else r["in_use_before_mib"]
        lines.append("| " + " | ".join([
            r["what"], r["size"], f"{r['peak_mib']:.0f}", f"{second:.0f}", f"{r['growth_mib']:.0f}", f"{r['seconds']:.1f}",
            str(r.get("network_calls", "")), r["error"] or "ok",
        ]) + " |")
    where = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} torch threads)"
    opts = "; ".join(f"{m} {json.dumps(o)}" for m, o in cfg["method_options"].items()) or "none"
    lines += ["", f"{cfg['architecture']} ({cfg['description']}), {cfg['dtype']}, {cfg['steps']} steps, VAE {cfg['vae']}, "
              f"tiled VAE {cfg['tiled_vae']}, method options: {opts}; weights etc. in use after the build: "
              f"{cfg['in_use_after_build_mib']:.0f} MiB. Machine: {where}; torch {mach['torch']}, "
              f"diffusers {mach['diffusers']}."]
    if cfg.get("memory_limit_gb"):
        lines.append(f"The CUDA allocator was capped at {cfg['memory_limit_gb']:g} GB for the whole run "
                     "(torch.cuda.set_per_process_memory_fraction), as on a card of that size.")
    if cfg.get("upscale_to"):
        lines.append(f"Upscale: a random {cfg['upscale_from']}² source image to {cfg['upscale_to']} with fstd, "
                     f"{cfg['upscale_steps']} steps at strength {cfg['upscale_strength']}, no prompt (no CFG).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from anysize.models import DTYPES, resolve_dtype

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sdxl", choices=list(_bench.ARCHITECTURES))
    ap.add_argument("--depth", default="auto", choices=["auto", "full", "reduced"],
                    help="auto: reduced on a CPU, full on a GPU (as anysize bench)")
    ap.add_argument("--size", type=parse_size, default=(8192, 8192), help="WxH of the generated images (default: 8192x8192)")
    ap.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS),
                    help=f"methods to generate with (default: {' '.join(DEFAULT_METHODS)}; none: only the upscale)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="a method option")
    ap.add_argument("--upscale-to", type=parse_size, default=None, help="also upscale with fstd to WxH")
    ap.add_argument("--upscale-from", type=int, default=2048, help="side of the random source image (default: 2048)")
    ap.add_argument("--upscale-steps", type=int, default=4)
    ap.add_argument("--upscale-strength", type=float, default=0.4, help="(default 0.4, upscale's; 1 step of 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    ap.add_argument("--vae", default="stand-in", choices=list(_bench.VAES))
    ap.add_argument("--tiled-vae", default="auto", choices=["auto", "on", "off", "fast"],
                    help="as anysize generate --tiled-vae (default: auto: tiled above 2048² px, exact statistics)")
    ap.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                    help="cap the CUDA allocator at GB (10^9 bytes) for the whole run "
                    "(torch.cuda.set_per_process_memory_fraction): a card of that size, on a larger one")
    ap.add_argument("--out", default=None, help="JSON report (a .md table beside it)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.upscale_steps < 1:
        ap.error("--steps and --upscale-steps must be positive")
    for m in args.methods:
        if m not in registry.METHODS:
            ap.error(f"unknown method {m!r}; registered: {', '.join(registry.names())}")
    if not args.methods and args.upscale_to is None:
        ap.error("nothing to measure: give --methods or --upscale-to")
    options = method_options(args.set)
    tiled = {"on": True, "off": False}.get(args.tiled_vae, args.tiled_vae)
    device = torch.device(args.device)
    reduced = args.depth == "reduced" or (args.depth == "auto" and device.type == "cpu")
    if args.memory_limit is not None:
        if device.type != "cuda":
            ap.error("--memory-limit caps the CUDA allocator: it needs --device cuda")
        total = torch.cuda.get_device_properties(device).total_memory
        if not 0 < args.memory_limit * 1e9 <= total:
            ap.error(f"--memory-limit {args.memory_limit:g} GB: the device has {total / 1e9:.1f} GB")
        # beyond it the allocator raises out of memory as a card of that size would (anysize's fallbacks
        # then run: the CFG halves one after the other, see ModelAdapter.predict_guided)
        torch.cuda.set_per_process_memory_fraction(args.memory_limit * 1e9 / total, device)

    t0 = time.perf_counter()
    adapter = _bench.build_adapter(args.arch, reduced=reduced, device=device, dtype=resolve_dtype(args.dtype), vae=args.vae)
    build_s = time.perf_counter() - t0
    # one small run first (a quarter of the native side), so that the first row does not carry one-time
    # allocations (cuBLAS and cuDNN workspaces, lazily built tables)
    m = adapter.size_multiple
    side = max(m, adapter.native_size[0] // 4 // m * m)
    api.generate(adapter, PROMPT, width=side, height=side, steps=1, seed=args.seed, progress=False)
    fresh(device)
    after_build = in_use_mib(device)
    width, height = args.size
    rows = []
    for name in args.methods:
        print(f"gpu_memory: {name} at {width}x{height}", file=sys.stderr, flush=True)
        opts = options.get(name, {})

        def generate(name=name, opts=opts):
            return api.generate(adapter, PROMPT, width=width, height=height, method=name, steps=args.steps,
                                seed=args.seed, tiled_vae=tiled, method_options=opts, progress=False)

        rows.append({**measure(device, name, generate), "size": f"{width}x{height}"})
    if args.upscale_to is not None:
        uw, uh = args.upscale_to
        print(f"gpu_memory: fstd upscale {args.upscale_from}² -> {uw}x{uh}", file=sys.stderr, flush=True)
        source = random_image(args.upscale_from, args.seed)

        def upscale():
            return api.upscale(adapter, source, size=(uw, uh), method="fstd", steps=args.upscale_steps,
                               strength=args.upscale_strength, seed=args.seed, tiled_vae=tiled,
                               method_options=options.get("fstd", {}), progress=False)

        rows.append({**measure(device, f"fstd upscale from {args.upscale_from}²", upscale), "size": f"{uw}x{uh}"})
    report = {
        "machine": machine(device),
        "config": {"architecture": args.arch, "description": _bench.describe(args.arch, reduced), "dtype": args.dtype,
                   "steps": args.steps, "vae": args.vae, "tiled_vae": args.tiled_vae, "method_options": options,
                   "seed": args.seed, "prompt": PROMPT, "build_seconds": round(build_s, 1),
                   "memory_limit_gb": args.memory_limit,
                   "in_use_after_build_mib": round(after_build, 1),
                   "upscale_to": None if args.upscale_to is None else f"{args.upscale_to[0]}x{args.upscale_to[1]}",
                   "upscale_from": args.upscale_from, "upscale_steps": args.upscale_steps,
                   "upscale_strength": args.upscale_strength},
        "rows": rows,
    }
    table = format_table(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()

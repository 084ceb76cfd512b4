"""Eager vs ``torch.compile`` (and each SDPA kernel) for a few methods, side by side in one process.

For each method, every variant (``--variants``: eager or compiled, each with an SDPA kernel) runs over the same
network with the same prompt and seed:

1. dynamo's caches are reset, so each method's compile cost is its own (not the graphs an earlier
   method left behind: FSTD's native-size tiles would reuse direct's graph);
2. each variant's first run is timed alone (``first_s``: for a compiled variant, tracing and
   compiling every shape the method meets, plus the run), then a second, untimed run (a patch with
   graph breaks, HiDiffusion, can meet a few new pieces there);
3. the variants then alternate (:func:`anysize.eval.timing.alternate`, no further warm-up), and each
   one's median is its steady-state ``seconds``; ``compile_s`` = ``first_s`` − that median;
4. ``speedup`` is the eager variant's median over this one's, both with the same SDPA kernel;
   ``sdpa_speedup`` is eager-auto's median over this one's;
5. ``max_abs_diff`` is the largest absolute difference of the final latents from eager-auto's,
   ``graphs`` the graphs dynamo compiled for the variant (``unique_graphs``).

    python benchmarks/compile_speed/compile_speed.py --arch toy --size 2x --methods direct fstd --steps 2
    python benchmarks/compile_speed/compile_speed.py --arch sdxl --size 2x --methods direct hidiffusion fstd \\
        --steps 10 --device cuda --dtype bf16 --variants compiled/auto eager/flash eager/cudnn --out sdxl_2048.json

Writes ``--out`` (JSON) and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing


def parse_args(argv=None):
    from anysize.bench import ARCHITECTURES
    from anysize.models import DTYPES, SDPA_BACKENDS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="toy", help=f"one of {', '.join(ARCHITECTURES)} (default: toy)")
    p.add_argument("--reduced", action="store_true", help="reduced-depth denoiser (for a CPU)")
    p.add_argument("--size", default="2x", help="native, a scale of the native side like 2x, or WxH (default: 2x)")
    p.add_argument("--methods", nargs="+", default=["direct", "hidiffusion", "fstd"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed alternating runs per variant (default: 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", help=f"{', '.join(DTYPES)} (default: fp32)")
    p.add_argument("--variants", nargs="+", default=["eager/auto", "compiled/auto"], metavar="KIND/SDPA",
                   help=f"what to time: eager or compiled, each with an SDPA kernel ({', '.join(SDPA_BACKENDS)}); "
                   "eager/auto, the baseline, is always included (default: eager/auto compiled/auto)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "compile_speed.json"))
    return p.parse_args(argv)


def variants(names) -> list[tuple[str, str]]:
    """``["compiled/flash", ...]`` -> [("eager", "auto"), ("compiled", "flash"), ...], checked, baseline first."""
    from anysize.errors import UnknownChoiceError
    from anysize.models.runtime import check_sdpa

    out = [("eager", "auto")]
    for name in names:
        kind, _, sdpa = name.partition("/")
        if kind not in ("eager", "compiled"):
            raise UnknownChoiceError("variant kind", kind, ["eager", "compiled"], ordered=True,
                                     extra=f" (a variant is KIND/SDPA, e.g. compiled/flash; got {name!r})")
        check_sdpa(sdpa or "auto")
        if (kind, sdpa or "auto") not in out:
            out.append((kind, sdpa or "auto"))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from anysize import api
    from anysize.bench import BENCH_PROMPT, build_adapter, describe, parse_bench_size
    from anysize.eval.timing import alternate, machine, synchronize
    from anysize.models import adapt, resolve_dtype

    chosen = variants(args.variants)
    dtype = resolve_dtype(args.dtype)
    t0 = time.perf_counter()
    base = build_adapter(args.arch, reduced=args.reduced, device=args.device, dtype=dtype)
    build_s = time.perf_counter() - t0
    width, height = parse_bench_size(args.size, base.native_size, base.size_multiple)
    steps = args.steps

    adapters = {}
    for kind, sdpa in chosen:
        a = adapt(base.pipe, native_size=base.native_latent_size)  # same network: only the runtime differs
        a.set_runtime(compile=kind == "compiled", sdpa=sdpa,
                      compile_backend=args.compile_backend if kind == "compiled" else None)
        adapters[f"{kind}/{sdpa}"] = a

    def run(name, method):
        def go():
            return api.generate(adapters[name], BENCH_PROMPT, width=width, height=height, method=method, steps=steps,
                                seed=args.seed, progress=False, output_type="latent").images
        return go

    rows = []
    out = Path(args.out)
    config = {"architecture": args.arch, "description": describe(args.arch, args.reduced),
              "width": width, "height": height, "steps": steps, "methods": args.methods,
              "variants": [f"{k}/{v}" for k, v in chosen],
              "dtype": args.dtype, "device": args.device, "compile_backend": args.compile_backend,
              "repeats": args.repeats, "seed": args.seed, "build_seconds": round(build_s, 1),
              "timed": "anysize.generate to latents: prompt encoding and the denoising loop (no VAE decode)"}
    for method in args.methods:
        print(f"{method}: {width}x{height}, {steps} steps", flush=True)
        torch._dynamo.reset()
        first, second_graphs, graphs = {}, {}, {}
        for name in adapters:
            before = counters["stats"]["unique_graphs"]
            synchronize(args.device)
            t = time.perf_counter()
            run(name, method)()
            synchronize(args.device)
            first[name] = time.perf_counter() - t
            after_first = counters["stats"]["unique_graphs"]
            run(name, method)()  # a patch's graph breaks can meet a few new pieces in a second run
            graphs[name] = counters["stats"]["unique_graphs"] - before
            second_graphs[name] = counters["stats"]["unique_graphs"] - after_first
            print(f"  {name}: first run {first[name]:.2f} s, {graphs[name]} graphs", flush=True)
        t = alternate({n: run(n, method) for n in adapters}, repeats=args.repeats, warmup=0, device=args.device)
        ref = t.results["eager/auto"].float()
        for name in adapters:
            kind, sdpa = name.split("/")
            med = t.median(name)
            eager_same = f"eager/{sdpa}" if f"eager/{sdpa}" in adapters else None
            rows.append({
                "method": method, "variant": name, "compile": kind == "compiled", "sdpa": sdpa,
                "first_s": round(first[name], 3),
                "compile_s": round(first[name] - med, 3) if kind == "compiled" else None,
                "seconds": round(med, 4), "seconds_all": [round(s, 4) for s in t.seconds[name]],
                "speedup": round(t.median(eager_same) / med, 3) if kind == "compiled" and eager_same else None,
                "sdpa_speedup": round(t.median("eager/auto") / med, 3),
                "max_abs_diff": float((t.results[name].float() - ref).abs().max()),
                "graphs": graphs[name], "graphs_in_second_run": second_graphs[name],
                "peak_memory_mib": round(t.peak_mib(name), 1),
            })
        # written after every method, so a run cut short (a device time limit) keeps what it measured
        md = write(out, {"machine": machine(args.device), "config": config, "results": rows})
    print(md.read_text(encoding="utf-8"))
    print(out)
    return 0


def write(out: Path, report) -> Path:
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(format_table(report) + "\n", encoding="utf-8")
    return md


def format_table(report) -> str:
    cfg, mach = report["config"], report["machine"]
    head = ["method", "variant", "first run s", "compile s", "steady s", "× eager (same SDPA)", "× eager-auto",
            "max abs diff", "graphs", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, spec):
        return "" if v is None else format(v, spec)

    for r in report["results"]:
        lines.append("| " + " | ".join([
            r["method"], r["variant"], f(r["first_s"], ".2f"), f(r["compile_s"], ".2f"), f(r["seconds"], ".3f"),
            f(r["speedup"], ".2f"), f(r["sdpa_speedup"], ".2f"), f(r["max_abs_diff"], ".2e"),
            str(r["graphs"]) + (f" (+{r['graphs_in_second_run']} in run 2)" if r["graphs_in_second_run"] else ""),
            f(r["peak_memory_mib"], ".0f"),
        ]) + " |")
    where = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} torch threads)"
    lines += ["", f"{cfg['description']}; {cfg['width']}x{cfg['height']}, {cfg['steps']} steps, {cfg['dtype']} on "
              f"{where}; torch {mach['torch']}, diffusers {mach['diffusers']}; backend {cfg['compile_backend']}; "
              f"median of {cfg['repeats']} alternating runs; {cfg['timed']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a generation's time goes: inside the denoiser, inside the VAE, and outside both (issue 23, goal 4).

For each method (default: every registered method that can run the settings, ``method.check``)
on one architecture at one size: ``--warmup`` untimed runs, then ``--repeats`` timed
``anysize.generate`` calls, each measured by :class:`anysize.eval.module_timing.ModuleTimer`:

* **network**: inside ``adapter.network`` (the U-Net or transformer; with ControlNets, their modules
  too), every outermost forward;
* **VAE**: inside the VAE's ``encoder`` / ``decoder`` (and its quant convs): the modules the tiled
  decode and encode call tile by tile (``anysize.models.tiled_vae`` calls ``vae.decoder`` and
  ``vae.encoder`` directly, not ``vae.decode``), so the tiling's own work (cutting tiles, the
  GroupNorm statistics bookkeeping, writing cores into the output) is *outside*;
* **VAE call**: the adapter's whole ``decode`` / ``encode`` (tiling and dtype moves included);
  ``VAE call − VAE`` is the tiling overhead;
* **wall**: the whole call, the device synchronised before and after.

On CUDA the module times are CUDA-event intervals summed after one synchronisation at the end
(no wait per call); on a CPU, ``time.perf_counter`` in the hooks. The outside time is split into
before the first module call (prompt encoding, setup), between calls (scheduler steps, fusion of
windows or tiles, host waits, VAE tiling) and after the last (conversion to a PIL image).
``--profile-outside N`` adds one more run per method under cProfile, paused while inside the
modules, and lists the N functions with the most host time of their own outside them.

    python benchmarks/network_share/network_share.py --arch toy --size 256x256 --steps 4 \\
        --out benchmarks/network_share/network_share_cpu_toy.json
    python benchmarks/network_share/network_share.py --arch sdxl --size 2048x2048 --steps 5 --device cuda \\
        --dtype bf16 --out /tmp/network_share_sdxl_2048.json

Writes the JSON report and a Markdown table beside it (``.md``); prints the table.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
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
from anysize.errors import AnysizeError  # noqa: E402
from anysize.eval.module_timing import ModuleTimer  # noqa: E402
from anysize.devices import is_out_of_memory  # noqa: E402
from anysize.eval.timing import machine, synchronize  # noqa: E402

PROMPT = _bench.BENCH_PROMPT


def attach(timer: ModuleTimer, adapter, controls=()) -> ModuleTimer:
    """Hook what the run spends its time in: the denoiser (and the ``controls``' ControlNets), the
    VAE's encoder/decoder modules, and the adapter's whole decode/encode calls."""
    timer.add_modules("network", [adapter.network, *(c.net for c in controls)])
    vae = adapter.vae
    timer.add_modules("vae", [getattr(vae, n, None) for n in ("encoder", "quant_conv", "post_quant_conv", "decoder")])
    timer.add_method("vae_call", adapter, "decode")
    timer.add_method("vae_call", adapter, "encode")
    return timer


def measure(adapter, method: str, *, width: int, height: int, steps: int, seed: int, tiled_vae,
            profile: cProfile.Profile | None = None) -> dict:
    """One timed generate under a fresh timer; with ``profile``, cProfile runs outside the modules."""

    def pause(entering: bool) -> None:
        (profile.disable if entering else profile.enable)()

    timer = attach(ModuleTimer(adapter.device, on_inside=pause if profile is not None else None), adapter)
    synchronize(adapter.device)
    with timer:
        if profile is not None:
            profile.enable()
        t0 = time.perf_counter()
        try:
            result = api.generate(adapter, PROMPT, width=width, height=height, method=method, steps=steps, seed=seed,
                                  tiled_vae=tiled_vae, progress=False)
            synchronize(adapter.device)
        finally:
            if profile is not None:
                profile.disable()
        wall = time.perf_counter() - t0
    secs, calls, split = timer.seconds(), timer.calls, timer.outside_split()
    inside = secs["network"] + secs["vae"]
    return {
        "wall_s": wall,
        "region_s": timer.region_seconds(),  # the same interval on the groups' clock (the device's on CUDA)
        "network_s": secs["network"],
        "vae_s": secs["vae"],
        "vae_call_s": secs["vae_call"],
        "vae_tiling_overhead_s": secs["vae_call"] - secs["vae"],
        "share_pct": 100.0 * inside / wall,
        "outside_s": wall - inside,
        "outside_before_s": split["before"],
        "outside_between_s": split["between"],
        "outside_after_s": split["after"],
        "network_forwards": calls["network"],
        "network_evaluations": result.network_calls,
        "vae_forwards": calls["vae"],
        "vae_calls": calls["vae_call"],
    }


def top_outside(profile: cProfile.Profile, n: int) -> list[dict]:
    """The ``n`` functions with the most own host time (cProfile ``tottime``) outside the modules."""
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, _cum, _callers) in stats.stats.items():
        where = func if path == "~" else f"{Path(path).name}:{line}({func})"
        rows.append({"function": where, "calls": ncalls, "own_s": tottime})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:n]


def run_method(adapter, name: str, args, width: int, height: int) -> dict:
    for _ in range(args.warmup):
        api.generate(adapter, PROMPT, width=width, height=height, method=name, steps=args.steps, seed=args.seed,
                     tiled_vae=args.tiled_vae, progress=False)
    runs = [measure(adapter, name, width=width, height=height, steps=args.steps, seed=args.seed,
                    tiled_vae=args.tiled_vae) for _ in range(args.repeats)]
    if len({r["network_evaluations"] for r in runs}) != 1:
        raise RuntimeError(f"{name} made a different number of network calls per run")
    middle = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]  # every column from one run
    row = {"method": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in middle.items()},
           "wall_s_all": [round(r["wall_s"], 4) for r in runs]}
    if args.profile_outside:
        prof = cProfile.Profile()
        measure(adapter, name, width=width, height=height, steps=args.steps, seed=args.seed,
                tiled_vae=args.tiled_vae, profile=prof)
        row["outside_top"] = [{**r, "own_s": round(r["own_s"], 4)} for r in top_outside(prof, args.profile_outside)]
    return row


def format_table(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    head = ["method", "wall s", "network s", "VAE s", "network+VAE %", "outside s", "before / between / after s",
            "VAE tiling s", "network forwards", "network evals"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["methods"]:
        lines.append("| " + " | ".join([
            r["method"], f"{r['wall_s']:.3f}", f"{r['network_s']:.3f}", f"{r['vae_s']:.3f}", f"{r['share_pct']:.1f}",
            f"{r['outside_s']:.3f}",
            f"{r['outside_before_s']:.3f} / {r['outside_between_s']:.3f} / {r['outside_after_s']:.3f}",
            f"{r['vae_tiling_overhead_s']:.3f}", str(r["network_forwards"]), str(r["network_evaluations"]),
        ]) + " |")
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | not run: {why} |" + " |" * (len(head) - 2))
    where = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} torch threads)"
    clock = "CUDA events" if "gpu" in mach else "time.perf_counter in the hooks"
    lines += ["", f"{cfg['architecture']} ({cfg['description']}) at {cfg['width']}x{cfg['height']}, {cfg['steps']} steps, "
              f"{cfg['dtype']}, VAE {cfg['vae']}, tiled VAE {cfg['tiled_vae']}; {cfg['repeats']} timed run(s) after "
              f"{cfg['warmup']} warm-up (the run of median wall time); module times from {clock}. Machine: {where}; "
              f"torch {mach['torch']}, diffusers {mach['diffusers']}."]
    for r in report["methods"]:
        if r.get("outside_top"):
            lines += ["", f"Host time outside the modules, {r['method']} (cProfile, own time, top {len(r['outside_top'])}):", "",
                      "| function | calls | own s |", "|---|---|---|"]
            lines += [f"| `{t['function']}` | {t['calls']} | {t['own_s']:.4f} |" for t in r["outside_top"]]
    return "\n".join(lines)


def parse_args(argv=None):
    from anysize.models import DTYPES, resolve_dtype

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="toy", choices=list(_bench.ARCHITECTURES))
    ap.add_argument("--depth", default="auto", choices=["auto", "full", "reduced"],
                    help="auto: reduced on a CPU, full on a GPU (as anysize bench)")
    ap.add_argument("--size", default="2x", help="native, a scale of the native side like 2x, or WxH (default: 2x)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method that can run")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--vae", default="stand-in", choices=list(_bench.VAES),
                    help="the builders' small stand-in VAE or a random one of the released layout (default: stand-in)")
    ap.add_argument("--tiled-vae", default="auto", choices=["auto", "on", "off", "fast"],
                    help="as anysize generate --tiled-vae (default: auto: tiled above 2048² px, exact statistics)")
    ap.add_argument("--profile-outside", type=int, default=0, metavar="N",
                    help="one more run per method under cProfile: the N functions with the most host time outside "
                         "the modules (default: 0, off)")
    ap.add_argument("--out", default=None, help="JSON report (a .md table beside it)")
    args = ap.parse_args(argv)
    for v, name in ((args.steps, "--steps"), (args.repeats, "--repeats")):
        if v < 1:
            ap.error(f"{name} must be a positive integer")
    if args.warmup < 0 or args.profile_outside < 0:
        ap.error("--warmup and --profile-outside must be >= 0")
    args.torch_dtype = resolve_dtype(args.dtype)
    args.tiled_vae = {"on": True, "off": False}.get(args.tiled_vae, args.tiled_vae)
    if args.out is not None and not args.out.endswith(".json"):
        ap.error("--out must end in .json")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    reduced = args.depth == "reduced" or (args.depth == "auto" and torch.device(args.device).type == "cpu")
    t0 = time.perf_counter()
    adapter = _bench.build_adapter(args.arch, reduced=reduced, device=args.device, dtype=args.torch_dtype, vae=args.vae)
    build_s = time.perf_counter() - t0
    width, height = _bench.parse_bench_size(args.size, adapter.native_size, adapter.size_multiple)
    adapter.check_size(height, width)
    names = args.methods or registry.names()
    rows, skipped = [], {}
    report = {
        "machine": machine(args.device),
        "config": {"architecture": args.arch, "description": _bench.describe(args.arch, reduced), "width": width,
                   "height": height, "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                   "dtype": args.dtype, "vae": args.vae, "tiled_vae": args.tiled_vae, "seed": args.seed,
                   "prompt": PROMPT, "build_seconds": round(build_s, 1),
                   "clock": "cuda events" if torch.device(args.device).type == "cuda" else "perf_counter"},
        "methods": rows,
        "skipped": skipped,
    }
    for name in names:
        try:
            registry.create(name).check(adapter, height, width, args.steps)
        except AnysizeError as e:
            skipped[name] = str(e)
            continue
        print(f"network_share: {name} at {width}x{height}", file=sys.stderr, flush=True)
        try:
            rows.append(run_method(adapter, name, args, width, height))
        except Exception as e:  # noqa: BLE001 -- a method out of memory or refused mid-run is a row; the rest raise
            if not (is_out_of_memory(e) or isinstance(e, AnysizeError)):
                raise
            skipped[name] = f"failed during the run: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"network_share: {name}: {skipped[name]}", file=sys.stderr, flush=True)
            del e  # the traceback holds the frames' tensors: drop it before freeing
            gc.collect()
            if torch.device(args.device).type == "cuda":
                torch.cuda.empty_cache()
        write(report, args.out)  # after every method, so a part stopped by its time limit keeps its rows
    print(format_table(report))
    write(report, args.out)
    return report


def write(report: dict, out: str | None) -> None:
    """The JSON report and its .md table (nothing without ``--out``)."""
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(format_table(report) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

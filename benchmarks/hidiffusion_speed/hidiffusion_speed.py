"""Speed of direct vs anysize's HiDiffusion vs the official ``hidiffusion`` package.

Real SD 1.5 and SDXL U-Net block layouts (block types, layers per block, transformer depth per
level, heads per level, up/down structure) with random weights, in a reduced configuration that a
CPU can run; every reduction is printed with the results:

* channel widths divided by ``--width-div`` (default 4; head counts kept, so head dims shrink too);
* the native latent size divided by the same factor as the resolution, so the *scale over native*
  is the real one: SD 1.5 at 4x native per side (= 2048 px for the real model, 512 px here with a
  native latent of 16) and SDXL at 2x native (= 2048 px for the real model, 512 px here with a
  native latent of 32);
* cross-attention / pooled text widths from the tiny text encoders of ``anysize.builders``;
* ``--steps`` (default 10) instead of 50, DDIM (SD) / Euler (SDXL), CFG on (batch 2).

All three run the same stock diffusers pipeline call with the same weights, seed and scheduler
(``output_type="latent"``: no VAE), in alternating order (``direct, ours, official``, then the reverse,
...) after a warm-up each (``--warmup-steps``: 1 step, or 0 for a whole run, which also warms the
shapes of the later, full-resolution phase); medians of the process's CPU time (robust on a shared machine; wall-clock
ratios alongside) are reported as ratios. The package picks its profile from absolute latent
sizes (256 / 512), which the reduced sizes never reach; for SD 1.5 its module-level setting for the
"1024" profile is set to the 2048 profile's (T1 0.7, T2 0.3) -- the knob its README documents -- and,
for reduced SDXL at ``--sdxl-scale 4``, its "2048" profile to the "4096" one (aggressive RAU-Net off),
so both implementations run the same schedule, and the outputs are compared (max abs diff, with the
same global-RNG window shifts).

On a GPU (``--device cuda``) the timings are wall-clock seconds with the device synchronised, and
``--width-div 1`` runs the real widths at the real sizes (SD 1.5 and SDXL at 2048²; ``--sdxl-scale 4``
for SDXL at 4096²):

    PYTHONPATH=. python benchmarks/hidiffusion_speed/hidiffusion_speed.py --steps 10 --repeats 2
    ANYSIZE_HIDIFFUSION_PATH=/path/to/pip-target PYTHONPATH=. python benchmarks/hidiffusion_speed/hidiffusion_speed.py
    PYTHONPATH=. python benchmarks/hidiffusion_speed/hidiffusion_speed.py --device cuda --dtype fp16 --width-div 1 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

import anysize
from anysize.eval.timing import machine, synchronize
from anysize.builders import tiny_pipeline

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from hidiffusion_official import OFFICIAL_NAMES, load_official  # noqa: E402

ARCHS = {
    # family, real widths, heads per level (diffusers' attention_head_dim), transformer depth per level
    "sd15": dict(family="sd1", widths=(320, 640, 1280, 1280), heads=8, depth=1, native=64, scale=4),
    "sdxl": dict(family="sdxl", widths=(320, 640, 1280), heads=(5, 10, 20), depth=(1, 2, 10), native=128, scale=2),
}


def build_unet(arch: str, div: int, text_dim: int, seed: int = 0, device: str = "cpu"):
    from diffusers import UNet2DConditionModel

    a = ARCHS[arch]
    widths = tuple(w // div for w in a["widths"])
    native = a["native"] // div
    kw = dict(
        sample_size=native, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        cross_attention_dim=text_dim, attention_head_dim=a["heads"], norm_num_groups=next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths)),
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    )
    if arch == "sd15":
        kw.update(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    else:
        kw.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=a["depth"], use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + 48)
    # built on the target device: random init of a full-size U-Net is seconds there, minutes on a CPU
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**kw).eval()
    return unet, widths, native


def make_pipe(arch: str, div: int, device: str = "cpu", dtype=torch.float32, unet=None):
    """The tiny pipeline of the arch's family with the (reduced) real U-Net, or ``unet`` when given."""
    a = ARCHS[arch]
    pipe = tiny_pipeline(a["family"])
    text_dim = pipe.unet.config.cross_attention_dim
    if unet is None:
        unet, widths, native = build_unet(arch, div, text_dim, device=device)
    else:
        widths, native = tuple(unet.config.block_out_channels), unet.config.sample_size
    pipe.unet = unet
    pipe.register_modules(unet=unet)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if a["family"] == "sd1":
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe, widths, native


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--width-div", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup-steps", type=int, default=1, help="steps of each warm-up run; 0 = a whole run (default: 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--sdxl-scale", type=int, default=None, help="SDXL's scale over native per side (default: 2 = 2048²)")
    ap.add_argument("--sd15-scale", type=int, default=None, help="SD 1.5's scale over native per side (default: 4 = 2048²)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    on_cpu = torch.device(args.device).type == "cpu"
    scales = {"sd15": args.sd15_scale or ARCHS["sd15"]["scale"], "sdxl": args.sdxl_scale or ARCHS["sdxl"]["scale"]}
    hd = load_official()
    if hd is None:
        print("(the official hidiffusion package is not installed: its column is skipped)")
    else:
        import importlib

        official_module = importlib.import_module("hidiffusion.hidiffusion")
        ratios = official_module.switching_threshold_ratio_dict
        ratios["sd15_1024"] = dict(ratios["sd15_2048"])
        if args.width_div > 1 and scales["sdxl"] >= 4:  # reduced SDXL at 4x: the package's 4096 profile
            ratios["sdxl_2048"] = dict(ratios["sdxl_4096"])
            official_module.is_aggressive_raunet = False

    where = (f"{platform.processor() or platform.machine()}, torch threads {args.threads}" if on_cpu
             else machine(args.device).get("gpu"))
    print(f"machine: {where}, torch {torch.__version__}, {args.dtype}; "
          f"{args.steps} steps, CFG, {args.repeats} alternating repeats after a "
          f"{'whole-run' if args.warmup_steps == 0 else f'{args.warmup_steps}-step'} warm-up each\n")
    rows, records = [], []
    for arch in args.archs:
        a = ARCHS[arch]
        scale = scales[arch]
        pipe, widths, native = make_pipe(arch, args.width_div, args.device, dtype)
        side = native * scale * 8
        desc = (f"{arch}: widths {widths} (real {a['widths']}), heads {a['heads']}, transformer depth {a['depth']}, "
                f"native latent {native} (real {a['native']}), run at {side}x{side} px = {scale}x native per side "
                f"(real: {a['native'] * scale * 8}x{a['native'] * scale * 8})")
        print(desc)
        official = None
        if hd is not None:
            official, _, _ = make_pipe(arch, args.width_div, args.device, dtype, unet=copy.deepcopy(pipe.unet))
            official.register_to_config(_name_or_path=OFFICIAL_NAMES[a["family"]])
            hd.apply_hidiffusion(official)

        def run(p, steps=args.steps):
            torch.manual_seed(1234)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return p("a red square", height=side, width=side, num_inference_steps=steps, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(0), output_type="latent").images

        def ours(steps=args.steps):
            with anysize.patch(pipe, "hidiffusion", shift_source="global"):
                return run(pipe, steps)

        impls = {"direct": lambda steps=args.steps: run(pipe, steps), "anysize": ours}
        if official is not None:
            impls["official"] = lambda steps=args.steps: run(official, steps)
        for fn in impls.values():  # warm-up: one run each
            fn(args.warmup_steps or args.steps)
        times = {name: [] for name in impls}
        cpu = {name: [] for name in impls}
        outs = {}
        for r in range(args.repeats):
            order = list(impls.items())
            for name, fn in order if r % 2 == 0 else order[::-1]:  # reversed every other round: drift cancels
                synchronize(args.device)
                t, c = time.perf_counter(), time.process_time()
                outs[name] = fn()
                synchronize(args.device)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                print(f"  {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU", flush=True)
        wall = {k: statistics.median(v) for k, v in times.items()}
        # CPU time is robust to other load on a shared CPU; on a GPU only wall-clock time means anything
        med = {k: statistics.median(v) for k, v in cpu.items()} if on_cpu else wall
        diff = (outs["anysize"].float() - outs["official"].float()).abs().max().item() if official is not None else float("nan")
        rows.append((arch, med, wall, diff))
        records.append({"architecture": arch, "size": side, "scale_over_native": scale, "widths": list(widths),
                        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
                        "median_seconds": {k: round(v, 3) for k, v in med.items()}, "max_abs_diff_vs_official": diff})
        pipe = official = impls = outs = None  # free the device memory before the next model
        if not on_cpu:
            torch.cuda.empty_cache()

    if on_cpu:
        print("\nmedian CPU seconds of the process (1 torch thread; robust to other load on the machine), "
              "wall-clock ratio in brackets\n")
    else:
        print("\nmedian wall-clock seconds, device synchronised (the bracketed ratio is the same figure)\n")
    print("| model (reduced) | direct (s) | anysize hidiffusion (s) | official hidiffusion (s) | "
          "speed-up vs direct | anysize / official time | max abs diff vs official |")
    print("|---|---|---|---|---|---|---|")
    for arch, med, wall, diff in rows:
        off = med.get("official")
        speed = f"{med['direct'] / med['anysize']:.2f}x ({wall['direct'] / wall['anysize']:.2f}x)"
        vs = f"{med['anysize'] / off:.3f} ({wall['anysize'] / wall['official']:.3f})" if off else "-"
        print(f"| {arch} | {med['direct']:.2f} | {med['anysize']:.2f} | {f'{off:.2f}' if off else '-'} | {speed} | {vs} | "
              f"{diff:.1e} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(args.device), "argv": sys.argv[1:], "steps": args.steps, "dtype": args.dtype,
                       "width_div": args.width_div, "results": records}, f, indent=1)


if __name__ == "__main__":
    main()

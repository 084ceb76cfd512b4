"""Speed of ElasticDiffusion: anysize's ``elastic`` vs the official loop structure, direct and MultiDiffusion.

Four candidates generate the same prompt, seed and size on the same random-weight network, one run
(:func:`anysize.eval.timing.alternate`: one untimed warm-up each, then alternating rounds), so the
ratios are measured side by side:

* ``direct``: the whole canvas in one CFG call per step;
* ``multidiffusion``: native windows every native/8 latent px, fused (its defaults);
* ``elastic``: anysize's ElasticDiffusion, all R+1 reference passes in one call, local patches
  batched, backgrounds encoded once per run;
* ``elastic (official loop, vb N)``: the same method with the official code's loop structure: one
  network call per reference pass and a VAE encode of both background blocks for every padded call
  (``batch_references=False, cache_background=False``), with N local patches per call
  (``--official-vb``, default 1 and 16: ``view_batch_size`` is 1 in the official constructor, which
  ``generate_image()`` keeps, and 16 in its CLI, README and demo). Same settings, same number of
  network evaluations.

Elastic runs with the official ``generate_image()`` defaults (R 20, new_p 0.3, λ0 1000, γ 3,
repaint on) unless ``--preset`` says otherwise; every candidate uses DDIM (the official scheduler)
and guidance 10. Times are whole generations to latents (the final VAE decode, the same for all,
is left out).

Networks: the SD 2.1 (768-v) and SDXL U-Net and VAE layouts of :mod:`anysize.builders`
with random weights. On a CPU the channel widths of the U-Net and the VAE are divided by
``--width-div`` (default 4; head counts kept) and the native latent size and the image size by the
same factor, so the ratio over native is the real one (SD 2.1 at 2048x1024 = 2.67x native on the
long side; SDXL at 2048² = 2x); U-Net depth is reduced as in ``anysize bench``. On a GPU run
``--width-div 1 --full`` for the real networks at the issue's sizes:

    PYTHONPATH=. python benchmarks/elastic_speed/elastic_speed.py                         # CPU, reduced
    PYTHONPATH=. python benchmarks/elastic_speed/elastic_speed.py --width-div 1 --full --device cuda --dtype fp16 \\
        --steps 50 --repeats 3 --sd21-size 2048x1024 --sdxl-size 2048x2048
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import anysize
from anysize.builders import build_pipeline
from anysize.eval.timing import alternate, machine
from anysize.models import adapt

PROMPT = "a red triangle on a blue background"


def _groups(widths) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))


def give_vae(pipe, div: int, device="cpu", dtype=torch.float32):
    """Give the pipeline a VAE of the real SD/SDXL layout (128/256/512/512, 2 layers per block) with
    its widths divided by ``div`` (1: the real VAE), drawn on ``device``: the official loop's
    per-call background encodes cost what they cost with the real autoencoder."""
    from diffusers import AutoencoderKL

    vw = tuple(w // div for w in (128, 256, 512, 512))
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=vw, layers_per_block=2, norm_num_groups=_groups(vw), latent_channels=4,
            scaling_factor=pipe.vae.config.scaling_factor, force_upcast=True,
        ).eval()
    pipe.register_modules(vae=vae.to(dtype=dtype))
    return pipe


def shrink(pipe, div: int):
    """Divide the U-Net's channel widths and native size by ``div``."""
    from diffusers import UNet2DConditionModel

    cfg = dict(pipe.unet.config)
    widths = tuple(w // div for w in cfg["block_out_channels"])
    cfg.update(block_out_channels=widths, sample_size=cfg["sample_size"] // div, norm_num_groups=_groups(widths))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(cfg).eval()
    pipe.register_modules(unet=unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parse(size: str) -> tuple[int, int]:
    w, h = size.lower().split("x")
    return int(w), int(h)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["sd2.1", "sdxl"], choices=["sd2.1", "sdxl"])
    ap.add_argument("--sd21-size", default=None, help="WxH (default: 2048x1024 divided by --width-div)")
    ap.add_argument("--sdxl-size", default=None, help="WxH (default: 2048x2048 divided by --width-div)")
    ap.add_argument("--width-div", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="full U-Net depth (default: reduced, as anysize bench)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--preset", default=None, help="elastic preset (default: the generate_image defaults)")
    ap.add_argument("--set", nargs="*", default=[], help="extra elastic options key=value")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--official-vb", type=int, nargs="+", default=[1, 16],
                    help="local patches per call of the official-loop candidates (default: 1 16)")
    ap.add_argument("--no-multidiffusion", action="store_true", help="leave the MultiDiffusion candidate out")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v)
    elastic_opts = {**({"preset": args.preset} if args.preset else {}), **extra}
    sizes = {"sd2.1": args.sd21_size or f"{2048 // args.width_div}x{1024 // args.width_div}",
             "sdxl": args.sdxl_size or f"{2048 // args.width_div}x{2048 // args.width_div}"}
    print(f"machine: {machine(args.device)['cpu'] if args.device == 'cpu' else machine(args.device).get('gpu')}, "
          f"torch threads {args.threads}, torch {torch.__version__}, {args.dtype}; {args.steps} steps, DDIM, guidance 10, "
          f"{args.repeats} alternating repeats after 1 warm-up each; elastic options {elastic_opts or 'generate_image defaults'}",
          flush=True)
    records = []
    profile = "full" if args.full else "reduced"
    for arch in args.archs:
        if args.width_div > 1:
            pipe = shrink(build_pipeline(arch, profile, device="cpu", dtype=torch.float32), args.width_div)
            give_vae(pipe, args.width_div)
            pipe.to(device=args.device, dtype=dtype)
        else:  # the real widths: drawn on the device in the final dtype
            pipe = give_vae(build_pipeline(arch, profile, device=args.device, dtype=dtype), 1,
                            args.device, dtype)
        adapter = adapt(pipe)
        w, h = parse(sizes[arch])
        nh, nw = adapter.native_size
        params = sum(p.numel() for p in adapter.network.parameters()) / 1e6
        print(f"\n{arch}: U-Net {params:.0f}M params, widths {adapter.network.config.block_out_channels}, "
              f"native {nw}x{nh} px, run at {w}x{h} px ({max(w / nw, h / nh):.2f}x native on the long side)", flush=True)
        calls, encodes = {}, {}
        real_encode = adapter.encode

        def counting_encode(*a, **k):
            encodes["n"] = encodes.get("n", 0) + 1
            return real_encode(*a, **k)

        adapter.encode = counting_encode

        def candidate(name, method, opts):
            def go():
                encodes["n"] = 0
                r = anysize.generate(adapter, PROMPT, width=w, height=h, steps=args.steps, guidance=10.0, seed=0,
                                     scheduler="ddim", method=method, method_options=opts, output_type="latent",
                                     progress=False)
                calls[name] = (r.network_calls, encodes["n"])
                return r.latents

            return go

        officials = [f"elastic (official loop, vb {vb})" for vb in args.official_vb]
        cands = {"direct": candidate("direct", "direct", {})}
        if not args.no_multidiffusion:
            cands["multidiffusion"] = candidate("multidiffusion", "multidiffusion", {})
        cands["elastic"] = candidate("elastic", "elastic", elastic_opts)
        for name, vb in zip(officials, args.official_vb):
            cands[name] = candidate(name, "elastic", {**elastic_opts, "batch_references": False,
                                                      "cache_background": False, "view_batch_size": vb})
        t0 = time.perf_counter()
        timing = alternate(cands, repeats=args.repeats, warmup=1, device=args.device)
        diff = max((timing.results["elastic"].float() - timing.results[o].float()).abs().max().item() for o in officials)
        rec = {"architecture": arch, "size": [w, h], "native": [nw, nh], "unet_params_m": round(params),
               "widths": list(adapter.network.config.block_out_channels), "seconds_total": round(time.perf_counter() - t0, 1),
               "max_abs_diff_elastic_vs_official_loop": diff, "rows": []}
        for name in cands:
            rec["rows"].append({"method": name, "seconds": round(timing.median(name), 3),
                                "seconds_all": [round(s, 3) for s in timing.seconds[name]],
                                "evals_per_step": round(calls[name][0] / args.steps, 1),
                                "vae_encodes": calls[name][1]})
        records.append(rec)
        head = " | ".join(f"{o.split('(')[1][:-1]} / this" for o in officials)
        print(f"| method | s/image | evals/step | VAE encodes | x direct | {head} |")
        print("|---|---|---|---|---|" + "---|" * len(officials))
        for row in rec["rows"]:
            ratios = " | ".join(f"{timing.median(o) / row['seconds']:.2f}" for o in officials)
            print(f"| {row['method']} | {row['seconds']:.2f} | {row['evals_per_step']:g} | {row['vae_encodes']} | "
                  f"{row['seconds'] / timing.median('direct'):.2f} | {ratios} |", flush=True)
        print(f"(elastic vs its official loop structures: max abs latent difference {diff:.1e}, "
              f"the background posterior samples differ)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(args.device), "argv": sys.argv[1:], "steps": args.steps,
                       "elastic_options": elastic_opts, "results": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""FSTD vs explicit-overlap tiling: time side by side, and seam visibility on the toy model.

1. Speed. A random-weight U-Net with SD 1.5's block structure (CrossAttnDown×3 + Down, 2 layers
   per block, 8 attention heads), its widths divided by 4 (80-160-320-320) and its tile 32 latent px
   instead of 64 so it runs on a CPU. The canvas geometry is the paper's in tiles: 2×2 tiles
   (ASD's 1024² output with 64-latent tiles) and 4×4 tiles (2048²). Methods: `fstd` (defaults),
   `multidiffusion` with Gaussian weights and an overlap of half a tile (the "explicit overlap 32"
   of the paper's 64-px tiles, i.e. StableSR's / Mixture of Diffusers' tiling), and plain
   non-overlapping tiling (`fstd` with offset_range=0). Repeats alternate between the methods
   after one warm-up each; the table gives the median sampling time (latents only, no VAE).
2. Seams. The shipped toy model (`anysize.load()`, SD 1.5-structured, 128 px native, 32-latent
   tiles) generates the same prompts and seeds at a size of 2×3 tiles with each method; the seam
   score of :func:`anysize.toy.composition.seam_score` is measured on the lines of the
   non-overlapping tile grid (1.0 = a boundary line is as smooth as any other line). `fstd` runs
   with its defaults (the official unshifted grid on every 4th step) and with the paper's schedule
   (a shift on every step but the first and the last).

    python benchmarks/tiling_speed_seams/tiling_speed_seams.py                 # writes benchmarks/tiling_speed_seams/README.md
    python benchmarks/tiling_speed_seams/tiling_speed_seams.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

import anysize  # noqa: E402
from anysize.toy.composition import seam_score  # noqa: E402
from anysize.toy.benchmark import toy_prompts  # noqa: E402
from anysize.models import adapt  # noqa: E402

TILE = 32


def sd15_like_adapter():
    """SD 1.5's U-Net block structure at a quarter of its widths, tiny text encoder and VAE."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from anysize.builders import tiny_pipeline

    base = tiny_pipeline("sd1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=TILE, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(80, 160, 320, 320),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=base.text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=16,
        ).eval()
    comps = dict(base.components)
    comps["unet"] = unet
    comps["scheduler"] = DDIMScheduler.from_config(base.scheduler.config, clip_sample=False)
    pipe = StableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return adapt(pipe)


def speed_methods(tile: int) -> dict[str, tuple[str, dict]]:
    return {
        "fstd": ("fstd", {}),
        "explicit overlap (MoD, overlap T/2)": ("multidiffusion", {"stride": tile // 2, "weighting": "gaussian"}),
        "no overlap": ("fstd", {"offset_range": 0}),
    }


def run_speed(tiles_list, steps: int, repeats: int) -> list[dict]:
    adapter = sd15_like_adapter()
    rows = []
    for tiles in tiles_list:
        side = tiles * TILE * adapter.vae_factor
        methods = speed_methods(TILE)
        times = {k: [] for k in methods}
        calls = {}

        def once(label):
            name, opts = methods[label]
            res = anysize.generate(adapter, "a cat", height=side, width=side, steps=steps, guidance=1.0, seed=0,
                                   method=name, method_options=opts, output_type="latent", progress=False)
            calls[label] = res.network_calls // steps
            return res.seconds

        for label in methods:  # warm-up
            once(label)
        for _ in range(repeats):
            for label in methods:
                times[label].append(once(label))
        med = {k: statistics.median(v) for k, v in times.items()}
        fstd = med["fstd"]
        for label in methods:
            rows.append({"tiles": f"{tiles}x{tiles}", "latent": f"{tiles * TILE}²", "method": label,
                         "calls_per_step": calls[label], "median_s": med[label], "vs_fstd": med[label] / fstd,
                         "all_s": times[label]})
        print(json.dumps(rows[-3:], indent=1), flush=True)
    return rows


def seam_methods(tile: int) -> dict[str, tuple[str, dict]]:
    return {
        "fstd": ("fstd", {}),
        "fstd, shifted on every step but the first and last (paper's schedule)": ("fstd", {"reset_every": 10**6}),
        "explicit overlap (MoD, overlap T/2)": ("multidiffusion", {"stride": tile // 2, "weighting": "gaussian"}),
        "no overlap": ("fstd", {"offset_range": 0}),
    }


def run_seams(n: int, steps: int | None, rows_tiles: int, cols_tiles: int) -> list[dict]:
    adapter = anysize.load()
    tile = adapter.native_latent_size[0]
    px = tile * adapter.vae_factor
    h, w = rows_tiles * px, cols_tiles * px
    prompts = toy_prompts(n)
    bx = [k * px for k in range(1, cols_tiles)]
    by = [k * px for k in range(1, rows_tiles)]
    out = []
    for label, (name, opts) in seam_methods(tile).items():
        t0 = time.perf_counter()
        res = anysize.generate(adapter, prompts, height=h, width=w, steps=steps, seed=0, method=name,
                               method_options=opts, progress=False)
        scores = [seam_score(img, bx, by) for img in res.images]
        out.append({
            "method": label, "size": f"{w}x{h}", "images": n,
            "seam_overall": statistics.mean(s.overall for s in scores),
            "seam_x": statistics.mean(s.x for s in scores), "seam_y": statistics.mean(s.y for s in scores),
            "calls_per_image": res.network_calls / n, "seconds": time.perf_counter() - t0,
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="sampling steps of the speed runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiles", type=int, nargs="+", default=[2, 4], help="canvas sides in tiles (speed)")
    ap.add_argument("--seam-images", type=int, default=4)
    ap.add_argument("--seam-steps", type=int, default=None, help="toy model steps (default: its own, 20)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2x2 tiles only, 2 seam images, 8 steps")
    ap.add_argument("--out", type=Path, default=HERE / "README.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.tiles, args.seam_images, args.seam_steps = 1, [2], 2, 8
    torch.set_num_threads(1)

    speed = run_speed(args.tiles, args.steps, args.repeats)
    seams = run_seams(args.seam_images, args.seam_steps, 2, 3)

    cmd = "python benchmarks/tiling_speed_seams/tiling_speed_seams.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    lines = [
        "# FSTD vs explicit-overlap tiling: speed and seams",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
        "1 torch thread, CPU shared with other jobs).",
        "",
        "## Speed (measured side by side, alternating repeats)",
        "",
        "Reduced SD 1.5 architecture so it fits a CPU: SD 1.5's U-Net block structure with widths /4 "
        f"(80-160-320-320), tile {TILE} latent px instead of 64, random weights, DDIM, {args.steps} steps, "
        "no CFG (CFG doubles every method's calls alike), sampling only (no VAE). Canvas sizes are counted "
        "in tiles so the geometry matches the paper's (2x2 tiles = ASD's 1024² with 64-px tiles, 4x4 = 2048²). "
        f"Median of {args.repeats} repeats after one warm-up each.",
        "",
        "| canvas (tiles) | latent | method | network calls / step | median time (s) | time / fstd |",
        "|---|---|---|---|---|---|",
    ]
    for r in speed:
        lines.append(f"| {r['tiles']} | {r['latent']} | {r['method']} | {r['calls_per_step']} | "
                     f"{r['median_s']:.2f} | {r['vs_fstd']:.2f} |")
    lines += [
        "",
        "## Seams on the toy model",
        "",
        f"`anysize.load()` (toy SD 1.5-structured model, 128 px native), {seams[0]['size']} px = 2x3 tiles, "
        f"{args.seam_images} toy prompts (seeds 0..{args.seam_images - 1}), "
        f"{args.seam_steps or 'default (20)'} steps, default sampler and guidance. "
        "Seam score on the non-overlapping grid lines (1.0 = no seam; mean over images).",
        "",
        "| method | seam score (all lines) | x lines | y lines | network calls / image | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in seams:
        lines.append(f"| {s['method']} | {s['seam_overall']:.3f} | {s['seam_x']:.3f} | {s['seam_y']:.3f} | "
                     f"{s['calls_per_image']:.0f} | {s['seconds']:.1f} |")
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

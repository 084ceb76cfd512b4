"""Speed of Neighborhood Patch Attention vs full attention vs MultiDiffusion-style overlapping windows.

ScaleDiff's claim (paper Table 1/3): NPA keeps every layer but self-attention at one pass over the
canvas and cuts self-attention to ``s²`` native-size neighbourhoods, where full attention costs
``s⁴`` and MultiDiffusion (stride = window/2) re-runs the *whole network* on ``(2s-1)²`` windows.
This script measures, for the SDXL U-Net and the FLUX.1-dev transformer (real widths and heads,
random weights, :mod:`anysize.builders`), at ``s`` = 2 and 4 times the native side:

* **attention**: one self-attention layer on the canvas's token map -- SDXL ``down_blocks.1``'s
  first ``attn1`` (the largest map: native latent / 2; CFG batch 2), FLUX's first single-stream
  block (packed tokens, native latent / 2 per side, 256 text tokens, RoPE): the stock processor
  (full attention), the NPA processor, and "MD-attention", the stock processor on every
  overlapping native window (stride window/2) with the outputs averaged, i.e. MultiDiffusion's
  cost restricted to this layer;
* **whole image**: ``--steps`` denoising steps of the whole network on the canvas (prompt encoding
  included, no VAE): ``direct`` (full attention), ``direct`` inside ``anysize.patch(..., "npa")``,
  and the ``multidiffusion`` method with stride window/2 (the paper's MultiDiffusion setting).

Candidates alternate (:func:`anysize.eval.timing.alternate`), medians of ``--repeats`` runs after
one warm-up each, printed as ratios to full attention from that one run.

CPU profile (the default; 2 cores, ~10 min): reduced depth (SDXL transformer depth 1/1/2 with one
layer per block; FLUX 1 double + 2 single blocks) and a native latent of ``--native`` (default 16
latent px = 128 px instead of 1024 px), so 2x and 4x are 256² and 512² px: the *scale over native*
is the issue's (2048² and 4096² for a 1024-px model), the absolute token counts are 64x smaller.

GPU profile (``--gpu``): full depth, native 128 (1024 px), 2048² and 4096², bf16 on CUDA.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/scalediff_speed/scalediff_speed.py --out benchmarks/scalediff_speed/README.md
    PYTHONPATH=. python benchmarks/scalediff_speed/scalediff_speed.py --gpu --out scalediff_speed_gpu.md
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import anysize
from anysize.bench import describe
from anysize.builders import build_pipeline
from anysize.eval.timing import alternate, machine
from anysize.models import adapt
from anysize.patches.npa import NPAPatch
from anysize.tiling_grids import overlap_origins


def windows(grid: tuple[int, int], win: int):
    """Overlapping window origins (rows, cols) with stride win/2, covering the grid."""
    return overlap_origins(grid[0], win, max(1, win // 2)), overlap_origins(grid[1], win, max(1, win // 2))


def md_attention(call, x: torch.Tensor, grid, win: int, extra=None):
    """Stock attention on every overlapping window, outputs averaged (MultiDiffusion at one layer)."""
    B, L, C = x.shape
    H, W = grid
    rows, cols = windows(grid, win)
    xs = x.view(B, H, W, C)
    num = torch.zeros_like(xs)
    den = torch.zeros(1, H, W, 1, dtype=x.dtype, device=x.device)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            part = xs[:, r : r + win, c : c + win].reshape(B, win * win, C)
            out = call(part, None if extra is None else extra[(r, c)])
            num[:, r : r + win, c : c + win] += out.view(B, win, win, C)
            den[:, r : r + win, c : c + win] += 1
    return (num / den).view(B, L, C)


def attention_bench(arch: str, adapter, native: int, scale: int, repeats: int, device, dtype, text_tokens: int | None):
    g = torch.Generator(device="cpu").manual_seed(0)
    pipe = adapter.pipe
    if arch == "sdxl":
        attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
        win = native // 2  # this block's map at the native size
        grid = (win * scale, win * scale)
        C = attn.to_q.in_features
        x = torch.randn(2, grid[0] * grid[1], C, generator=g).to(device, dtype)
        patch = NPAPatch(adapter, window=native)

        def full():
            return attn(x)

        def npa():
            with patch:
                patch.latent_hw = (grid[0] * 2, grid[1] * 2)
                return attn(x)

        def md():
            return md_attention(lambda part, _: attn(part), x, grid, win)
    else:
        net = pipe.transformer
        attn = net.single_transformer_blocks[0].attn
        win = native // 2
        grid = (win * scale, win * scale)
        C = attn.to_q.in_features
        # FLUX's official runs join 256 T5 tokens to 4096-token windows; keep that 1:16 ratio at small windows
        lt = text_tokens or max(1, win * win // 16)
        x = torch.randn(1, grid[0] * grid[1], C, generator=g).to(device, dtype)
        text = torch.randn(1, lt, C, generator=g).to(device, dtype)

        def ids(r0, c0, h, w):
            yy, xx = torch.meshgrid(torch.arange(h) + r0, torch.arange(w) + c0, indexing="ij")
            img = torch.stack([torch.zeros_like(yy), yy, xx], -1).reshape(-1, 3).float()
            return torch.cat([torch.zeros(lt, 3), img]).to(device)

        rope = net.pos_embed(ids(0, 0, *grid))
        rows, cols = windows(grid, win)
        ropes = {(r, c): net.pos_embed(ids(r, c, win, win)) for r in rows for c in cols}
        patch = NPAPatch(adapter, window=native)

        def full():
            return attn(torch.cat([text, x], 1), image_rotary_emb=rope)[:, lt:]

        def npa():
            with patch:
                patch.token_grid, patch.text_len = grid, lt
                return attn(torch.cat([text, x], 1), image_rotary_emb=rope)[:, lt:]

        def md():
            return md_attention(lambda part, r: attn(torch.cat([text, part], 1), image_rotary_emb=r)[:, lt:],
                                x, grid, win, ropes)
    with torch.no_grad():
        t = alternate({"full": full, "npa": npa, "md": md}, repeats=repeats, warmup=1, device=device)
    n_md = len(windows(grid, win)[0]) * len(windows(grid, win)[1])
    return t, grid, win, n_md, (lt if arch == "flux" else 0)


def image_bench(adapter, native: int, scale: int, steps: int, repeats: int, warmup: int, device):
    side = native * scale * adapter.vae_factor

    def run(method="direct", **opts):
        return anysize.generate(adapter, "a castle", height=side, width=side, steps=steps, seed=0, method=method,
                                method_options=opts or None, output_type="latent", progress=False)

    def npa():
        with anysize.patch(adapter, "npa"):
            return run()

    cands = {"full": run, "npa": npa, "md": lambda: run("multidiffusion", stride=native // 2)}
    t = alternate(cands, repeats=repeats, warmup=warmup, device=device)
    return t, side


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["sdxl", "flux"], choices=["sdxl", "flux"])
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    p.add_argument("--native-attn", type=int, default=None,
                   help="native latent side for the attention-layer timings (default 32; 128 with --gpu)")
    p.add_argument("--native-image", type=int, default=None,
                   help="native latent side for the whole-network timings (default 16; 128 with --gpu)")
    p.add_argument("--image-archs", nargs="*", default=None,
                   help="archs timed as a whole network (default sdxl on the CPU, both with --gpu)")
    p.add_argument("--text-tokens", type=int, default=None,
                   help="FLUX text tokens in the attention timings (default window tokens / 16: 256 at 1024 px)")
    p.add_argument("--image-warmup", type=int, default=0)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpu", action="store_true", help="full depth, native 128, bf16 on CUDA")
    p.add_argument("--full-depth", action="store_true")
    p.add_argument("--skip-image", action="store_true", help="attention timings only")
    p.add_argument("--out", default=None, help="write the markdown table here too")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.gpu else "cpu")
    dtype = torch.bfloat16 if a.gpu else torch.float32
    native_attn = a.native_attn or (128 if a.gpu else 32)
    native = a.native_image or (128 if a.gpu else 16)
    image_archs = a.image_archs if a.image_archs is not None else (a.archs if a.gpu else ["sdxl"])
    reduced = not (a.gpu or a.full_depth)
    start = time.time()
    lines = [
        "# NPA vs full attention vs MultiDiffusion-style windows (ScaleDiff)",
        "",
        f"`{' '.join(['python', 'benchmarks/scalediff_speed/scalediff_speed.py'] + (argv if argv is not None else sys.argv[1:]))}`",
        "",
        f"Machine: {machine(device)}",
        "",
        f"{'Reduced' if reduced else 'Full'} depth, {dtype}. Attention layer: native latent {native_attn} px "
        f"({native_attn * 8} px images), medians of {a.repeats} alternating runs after 1 warm-up. Whole network: "
        f"native latent {native} px ({native * 8} px images), medians of {a.repeats} alternating runs after "
        f"{a.image_warmup} warm-up(s). Ratios are to full attention (lower is faster).",
        "",
        "| arch | scale | canvas | what | full s | NPA s | MD s | NPA / full | MD / full | MD / NPA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch in a.archs:
        pipe = build_pipeline(arch, "reduced" if reduced else "full", device=device, dtype=dtype)
        adapter = adapt(pipe, native_size=native)
        print(describe(arch, reduced), flush=True)
        for s in a.scales:
            t, grid, win, n_md, lt = attention_bench(arch, adapter, native_attn, s, a.repeats, device, dtype,
                                                     a.text_tokens)
            text = f" + {lt} text" if lt else ""
            row = (f"| {arch} | {s}x | {native_attn * s * 8}² px | attention layer ({grid[0]}x{grid[1]} tokens{text}, "
                   f"window {win}², {n_md} MD windows) | {t.median('full'):.3f} | {t.median('npa'):.3f} | "
                   f"{t.median('md'):.3f} | {t.ratio('npa', 'full'):.2f} | {t.ratio('md', 'full'):.2f} | "
                   f"{t.ratio('md', 'npa'):.2f} |")
            print(row, flush=True)
            lines.append(row)
        for s in a.scales:
            if not a.skip_image and arch in image_archs:
                t, side = image_bench(adapter, native, s, a.steps, a.repeats, a.image_warmup, device)
                row = (f"| {arch} | {s}x | {side}² px | whole network, {a.steps} step(s) | {t.median('full'):.2f} | "
                       f"{t.median('npa'):.2f} | {t.median('md'):.2f} | {t.ratio('npa', 'full'):.2f} | "
                       f"{t.ratio('md', 'full'):.2f} | {t.ratio('md', 'npa'):.2f} |")
                print(row, flush=True)
                lines.append(row)
        del pipe, adapter
    lines += ["", f"Total wall time {time.time() - start:.0f} s."]
    if not a.gpu:
        lines += ["", "CPU caveats: the absolute token counts are 64x (whole network: 256x) smaller than at "
                  "2048²/4096² for a 1024-px model, so fixed per-call costs weigh more; FLUX is not timed as a "
                  "whole network on the CPU because its 512 prompt tokens would dominate 8x8-token windows."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from anysize.output import save_text

        save_text(text, a.out, force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiled VAE decode: peak memory, time and error vs an untiled decode and vs diffusers' own tiling.

Each mode runs in a fresh single-threaded subprocess (peak RSS is per process), one after the other,
on the same random latent; the untiled decode is the reference for the error columns.

* ``untiled``: ``vae.decode(z)`` in one piece;
* ``diffusers``: ``vae.enable_tiling()`` (tiles of ``sample_size`` px with 25 % overlap, linear
  blending, each tile normalised with its own GroupNorm statistics);
* ``anysize-fast`` / ``anysize-exact``: :func:`anysize.models.tiled_vae.tiled_decode` (latent tile 64, halo 11),
  GroupNorm statistics estimated on a downsampled pass / recomputed exactly over the whole image.

The VAE has SD's decoder structure (4 up blocks, 2 resnets each + 1, 32 GroupNorm groups, mid-block
attention, 4 latent channels, factor 8) with random weights at 1/4 of SD's channel widths so the run
fits a CPU; activation memory scales with the width, so the *ratios* carry over to the real VAE.

    python benchmarks/tiled_vae_memory/tiled_vae_memory.py                      # the table in README.md
    python benchmarks/tiled_vae_memory/tiled_vae_memory.py --sizes 1024 --modes untiled anysize-fast --width 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ("untiled", "diffusers", "anysize-fast", "anysize-exact")

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from diffusers import AutoencoderKL
from anysize.models.tiled_vae import tiled_decode
mode, size, width, out_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
ch = tuple(max(32, int(c * width)) for c in (128, 256, 512, 512))
vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=ch, layers_per_block=2, latent_channels=4, norm_num_groups=32,
                    sample_size=512).eval().requires_grad_(False)
z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
if mode == "diffusers":
    vae.enable_tiling()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with torch.no_grad():
    if mode in ("untiled", "diffusers"):
        img = vae.decode(z).sample
    else:
        img = tiled_decode(vae, z, tile=64, halo=11, stats=mode.split("-")[1])
seconds = time.perf_counter() - t
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
np.save(out_path, img[0].numpy())
print(json.dumps({"growth_mib": growth / 1024, "seconds": seconds, "channels": ch}))
"""


def run_mode(mode: str, size: int, width: float, out_path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _CHILD, mode, str(size), str(width), out_path],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{mode} at {size}² failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="square image sides in px")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--exact-max", type=int, default=1024,
                    help="skip anysize-exact above this side (it costs ~16 decodes; default 1024)")
    ap.add_argument("--width", type=float, default=0.25, help="channel width relative to SD's VAE (default 0.25)")
    args = ap.parse_args(argv)
    import numpy as np
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch thread per run, torch {torch.__version__}; "
          f"SD-structured VAE decoder at {args.width:g}x SD's channel widths, random weights\n")
    print("| image | mode | peak RSS growth (MiB) | vs untiled | time (s) | vs untiled | max abs err | mean abs err (relative) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            ref = None
            base = None
            for mode in ["untiled"] + [m for m in args.modes if m != "untiled"]:
                if mode == "anysize-exact" and size > args.exact_max:
                    continue
                path = os.path.join(tmp, f"{mode}-{size}.npy")
                r = run_mode(mode, size, args.width, path)
                img = np.load(path)
                if ref is None:
                    ref, base = img, r
                d = np.abs(img - ref)
                print(f"| {size}² | {mode} | {r['growth_mib']:.0f} | {r['growth_mib'] / base['growth_mib']:.2f} | "
                      f"{r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | {d.max():.2e} | "
                      f"{d.mean():.2e} ({d.mean() / np.abs(ref - ref.mean()).mean():.1e}) |",
                      flush=True)


if __name__ == "__main__":
    main()

"""Peak memory of ``anysize.upscale`` (fstd, tiled VAE) at growing output sizes.

Each size runs in a fresh single-threaded subprocess (peak RSS is per process): load the embedded
toy model (128 px native, VAE factor 4), upscale a 128×128 toy image to size×size with ``fstd``
(strength 0.5 of 2 steps: one denoising step, enough to exercise every tile), tiled VAE encode and
decode (``--tiled-vae`` mode, default ``fast``), PNG written to a temporary folder. Reported: peak
RSS of the process, RSS after loading (the floor), their difference, seconds, network calls. The
canvas-sized tensors (float image 12 B/px, uint8 copy 3 B/px, latents) grow with the area; the
model's and the tiles' working sets do not.

    python benchmarks/upscale_memory/upscale_memory.py                       # 2048 and 8192, table to stdout
    python benchmarks/upscale_memory/upscale_memory.py --sizes 2048 4096 --out benchmarks/upscale_memory/README.md
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

_CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
import anysize
from anysize.output import save_png
size, tiled, steps, out_dir = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
tiled = {"on": True, "fast": "fast", "auto": "auto"}[tiled]
model = anysize.load()
# a 128x128 toy image to enlarge (the model's own output at its native size)
src = anysize.generate(model, "a red triangle on a blue background", steps=10, seed=0, progress=False).image
def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
floor = rss_mib()
t = time.perf_counter()
res = anysize.upscale(model, src, size=(size, size), method="fstd", strength=0.5, steps=steps,
                      prompt="a red triangle on a blue background", seed=0, tiled_vae=tiled, progress=False)
path = save_png(res.image, os.path.join(out_dir, f"up{size}.png"), res.config_for(0), force=True)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"size": size, "peak_mib": peak, "floor_mib": floor, "seconds": seconds,
                  "calls": res.network_calls, "png_mib": os.path.getsize(path) / 2**20}))
"""


def run(size: int, tiled: str, steps: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(size), tiled, str(steps), tmp], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise SystemExit(f"size {size} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--tiled-vae", default="fast", choices=["fast", "on", "auto"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    rows = [run(s, args.tiled_vae, args.steps, args.timeout) for s in args.sizes]
    base = rows[0]
    lines = [
        f"# anysize upscale: peak memory (toy model, fstd, tiled VAE {args.tiled_vae}, {args.steps} steps at strength 0.5)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), 1 thread per process; python "
        f"{platform.python_version()}. Command: `python benchmarks/upscale_memory/upscale_memory.py --sizes "
        f"{' '.join(map(str, args.sizes))} --tiled-vae {args.tiled_vae} --steps {args.steps}`.",
        "",
        "| output | peak RSS (MiB) | RSS after load (MiB) | growth (MiB) | growth / growth at "
        f"{base['size']}² | area ratio | seconds | network calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    g0 = base["peak_mib"] - base["floor_mib"]
    for r in rows:
        g = r["peak_mib"] - r["floor_mib"]
        lines.append(
            f"| {r['size']}² | {r['peak_mib']:.0f} | {r['floor_mib']:.0f} | {g:.0f} | {g / g0:.2f} | "
            f"{(r['size'] / base['size']) ** 2:.0f} | {r['seconds']:.0f} | {r['calls']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""anysize `direct` vs the stock diffusers pipeline, same model, seed, scheduler and size.

Measures the overhead of anysize's adapter + sampling loop over the diffusers pipeline it wraps
(it should be ~1.0x) and checks the images agree. Runs alternate (ours, stock, stock, ours, ...;
:func:`anysize.eval.timing.alternate`, shared with ``anysize bench``) so machine drift cancels;
warm-up runs are excluded.

    python benchmarks/direct_vs_diffusers/direct_vs_diffusers.py --families sd1 sdxl sd3 flux --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

import anysize
from anysize.eval.timing import alternate
from anysize.models import adapt
from anysize.builders import tiny_pipeline


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["sd1", "sd2", "sdxl", "sd3", "flux"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {args.threads}, "
          f"torch {torch.__version__}; tiny random-weight pipelines (anysize.builders), {args.size}², "
          f"{args.steps} steps, {args.repeats} alternating repeats after 1 warm-up each\n")
    print("| family | anysize direct (s) | diffusers pipeline (s) | ratio ours/stock | max abs diff |")
    print("|---|---|---|---|---|")
    for family in args.families:
        pipe = tiny_pipeline(family)
        adapter = adapt(pipe)

        def ours():
            return anysize.generate(adapter, "a red triangle", width=args.size, height=args.size, steps=args.steps,
                                    seed=0, output_type="np", progress=False).images[0]

        def stock():
            return pipe("a red triangle", width=args.size, height=args.size, num_inference_steps=args.steps,
                        guidance_scale=adapter.default_guidance, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images[0]

        t = alternate({"ours": ours, "stock": stock}, repeats=args.repeats, warmup=1)
        a, b = t.results["ours"], t.results["stock"]  # the agreement check
        mo, ms = t.median("ours"), t.median("stock")
        print(f"| {family} | {mo:.3f} | {ms:.3f} | {mo / ms:.3f} | {np.abs(a - b).max():.1e} |")


if __name__ == "__main__":
    main()

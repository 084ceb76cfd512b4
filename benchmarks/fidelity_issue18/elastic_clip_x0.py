"""Elastic on a scheduler that clips its x0 estimate (issue 18, item 9): how much the clipping moves the result.

The official ElasticDiffusion takes the clean estimates of its repaint pass and of reduced-resolution
guidance (RRG) from DDIM's ``pred_original_sample``, which DDIM clips to ±``clip_sample_range`` when
``clip_sample=True`` (diffusers' DDIM default, and what ``--scheduler ddim`` gives the embedded toy
model, whose shipped DPM-Solver config does not set it). anysize now clips them the same way
(:meth:`anysize.noise.NoiseSpace.clip_x0`); before, it used the unclipped estimates. This script runs
both on the toy model with the same seed: "unclipped" is the earlier behaviour, reproduced exactly by
making ``clip_x0`` the identity (it is the only place the clipping enters).

Reported per size and seed: the RRG term's RMS at the first step (the term added to x_{t-1}) for
both, their ratio, and the mean absolute difference of the decoded images in 1/255 units.

    PYTHONPATH=. python benchmarks/fidelity_issue18/elastic_clip_x0.py   # writes the .json next to it
"""

from __future__ import annotations

import argparse
import json
import sys
from unittest import mock

import numpy as np
import torch

import anysize
from anysize.eval.timing import machine
from anysize.methods.elastic import Elastic
from anysize.noise import NoiseSpace

PROMPT = "a red circle on a blue background"


def run(adapter, size, seed, steps, guidance, options, clip: bool):
    first = []
    original = Elastic._rrg

    def recording(self, ctx, *a, **k):
        delta = original(self, ctx, *a, **k)
        if ctx.index == 0:
            first.append(float(delta.float().pow(2).mean().sqrt()))
        return delta

    patches = [mock.patch.object(Elastic, "_rrg", recording)]
    if not clip:
        patches.append(mock.patch.object(NoiseSpace, "clip_x0", lambda self, x0: x0))
    for p in patches:
        p.start()
    try:
        res = anysize.generate(adapter, PROMPT, height=size[0], width=size[1], steps=steps, seed=seed,
                               guidance=guidance, scheduler="ddim", method="elastic", method_options=options,
                               progress=False)
    finally:
        for p in reversed(patches):
            p.stop()
    return np.asarray(res.image, dtype=np.float64), first[0] if first else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256x256", "256x512"], help="HxW in px (toy native: 128)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=10.0, help="the official value")
    ap.add_argument("--resampling-steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/fidelity_issue18/elastic_clip_x0.json")
    args = ap.parse_args(argv)
    adapter = anysize.load()
    options = {"resampling_steps": args.resampling_steps}
    rows = []
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        for seed in args.seeds:
            img_c, rrg_c = run(adapter, (h, w), seed, args.steps, args.guidance, options, clip=True)
            img_u, rrg_u = run(adapter, (h, w), seed, args.steps, args.guidance, options, clip=False)
            row = {"size": size, "seed": seed, "rrg_rms_step0_clipped": rrg_c, "rrg_rms_step0_unclipped": rrg_u,
                   "rrg_ratio_unclipped_over_clipped": rrg_u / rrg_c if rrg_c else None,
                   "image_mean_abs_diff_255": float(np.abs(img_c - img_u).mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": machine(), "model": "embedded toy (sd1 family, DDIM clip_sample=True)",
              "steps": args.steps, "guidance": args.guidance, "method_options": options, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

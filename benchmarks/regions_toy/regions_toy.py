"""Regional prompts on the toy model: "a red circle" in the left box and "a blue square" in the right
box of a 256x128 canvas; the share of seeds in which the composition metric finds a red object on
the left and a blue one on the right (anysize.toy.composition.objects_in_boxes), and the stricter
share with, besides, no red object on the right and no blue one on the left.

    python benchmarks/regions_toy/regions_toy.py --n 32 --json benchmarks/regions_toy/regions_toy.json

Rows: multidiffusion with the regions (bootstrapping on, the default 0.2, and off), fstd with the
regions, and, as the reference, multidiffusion without regions on one prompt naming both objects.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import torch

import anysize
from anysize.toy.composition import objects_in_boxes

WIDTH, HEIGHT = 256, 128
LEFT, RIGHT = (0, 0, 128, 128), (128, 0, 128, 128)
TARGETS = [("a red circle", LEFT), ("a blue square", RIGHT)]
SWAPPED = [("a red circle", RIGHT), ("a blue square", LEFT)]
BACKGROUND = "a white background"
BOTH = "a red circle and a blue square on a white background"


def regions(bootstrap: float) -> list:
    return [anysize.Region(p, box=b, bootstrap=bootstrap) for p, b in TARGETS]


ROWS = {
    "multidiffusion+regions": dict(method="multidiffusion", prompt=BACKGROUND, regions=lambda: regions(0.2)),
    "multidiffusion+regions, no bootstrap": dict(method="multidiffusion", prompt=BACKGROUND, regions=lambda: regions(0.0)),
    "fstd+regions": dict(method="fstd", prompt=BACKGROUND, regions=lambda: regions(0.2)),
    "multidiffusion, one prompt": dict(method="multidiffusion", prompt=BOTH, regions=lambda: None),
}
#: window/2 for multidiffusion (3 windows per prompt and step instead of 9; the demo sheet's setting)
OPTIONS = {"multidiffusion": {"stride": 16}, "fstd": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="seeds 0..n-1")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4, help="images per generate call")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"of: {', '.join(ROWS)}")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = anysize.load()
    out = {"config": {"size": f"{WIDTH}x{HEIGHT}", "targets": TARGETS, "background": BACKGROUND, "n": args.n,
                      "steps": args.steps, "options": OPTIONS, "model": "anysize toy (embedded default)",
                      "machine": f"{platform.machine()}, {torch.get_num_threads()} thread, torch {torch.__version__}",
                      "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                               text=True).stdout.strip()},
           "rows": {}}
    for name in args.rows:
        row = ROWS[name]
        hits, t0, calls = [], time.perf_counter(), 0
        for start in range(0, args.n, args.batch):
            seeds = list(range(start, min(args.n, start + args.batch)))
            res = anysize.generate(model, [row["prompt"]] * len(seeds), width=WIDTH, height=HEIGHT, method=row["method"],
                                   method_options=OPTIONS[row["method"]], seed=seeds, steps=args.steps, progress=False,
                                   regions=row["regions"]())
            calls += res.network_calls
            for seed, image in zip(seeds, res.images):
                left, right, red_right, blue_left = objects_in_boxes(image, TARGETS + SWAPPED)
                hits.append({"seed": seed, "red_left": left, "blue_right": right, "red_right": red_right,
                             "blue_left": blue_left})
        both = sum(h["red_left"] and h["blue_right"] for h in hits)
        only = sum(h["red_left"] and h["blue_right"] and not h["red_right"] and not h["blue_left"] for h in hits)
        out["rows"][name] = {
            "both_rate": both / len(hits), "only_there_rate": only / len(hits),
            "red_left_rate": sum(h["red_left"] for h in hits) / len(hits),
            "blue_right_rate": sum(h["blue_right"] for h in hits) / len(hits),
            "seconds_per_image": round((time.perf_counter() - t0) / len(hits), 2),
            "network_calls_per_image": calls / len(hits), "seeds": hits,
        }
        r = out["rows"][name]
        if args.json:  # after every row: a long run keeps what it measured
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        print(f"{name:40s} both {r['both_rate']:.0%}  only there {r['only_there_rate']:.0%}  red left {r['red_left_rate']:.0%}  blue right "
              f"{r['blue_right_rate']:.0%}  {r['seconds_per_image']} s/img", flush=True)


if __name__ == "__main__":
    main()

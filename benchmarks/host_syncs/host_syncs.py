"""Host/device synchronisations per denoising step of every method, counted on a CPU.

Runs each method on the tiny pipelines under ``anysize.testing.syncs.audit_sampling`` at 3 and at
6 steps, after a warm-up run; the difference divided by 3 is what a GPU run would wait for at every
step (host reads of device values, blocking uploads), the rest is once per run. ``--tree`` runs the same count on
another checkout (e.g. an older commit, with ``anysize/testing/syncs.py`` and ``anysize/devices.py``
copied in) in a subprocess, so both tables come from one invocation:

    PYTHONPATH=. python benchmarks/host_syncs/host_syncs.py --tree /tmp/anysize-old --json benchmarks/host_syncs/host_syncs.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

CASES = [  # family, method, height x native, width x native
    ("sd1", "direct", 2, 2), ("sd1", "multidiffusion", 2, 2), ("sd1", "fstd", 2, 2), ("sd1", "elastic", 2, 2),
    ("sd1", "scalediff", 2, 2), ("sd1", "hidiffusion", 2, 2), ("sdxl", "elastic", 1, 3),
    ("sdxl", "multidiffusion", 2, 2), ("flux", "multidiffusion", 1, 2), ("flux", "scalediff", 1, 2),
]


def count() -> list[dict]:
    import torch

    import anysize
    from anysize.models import adapt
    from anysize.testing.syncs import audit_sampling

    try:
        from anysize.builders import tiny_pipeline
    except ImportError:  # a --tree checkout from before anysize.builders
        from anysize.testing import tiny_pipeline

    torch.set_num_threads(1)
    adapters, rows = {}, []
    for family, method, hm, wm in CASES:
        ad = adapters.setdefault(family, adapt(tiny_pipeline(family)))
        nh, nw = ad.native_size
        events = {}
        for steps in (3, 3, 6):  # the first run warms the per-process caches (uploaded ids, host tables)
            with audit_sampling() as audits, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                anysize.generate(ad, "a red fox", width=nw * wm, height=nh * hm, method=method, steps=steps,
                                 seed=3, progress=False, output_type="latent")
            events[steps] = [e for a in audits for e in a.events]
        per_step = (len(events[6]) - len(events[3])) / 3
        kinds = {k: (sum(e.kind == k for e in events[6]) - sum(e.kind == k for e in events[3])) / 3
                 for k in ("read", "upload")}
        rows.append({"family": family, "method": method, "size": f"{nw * wm}x{nh * hm}",
                     "per_step": per_step, "reads_per_step": kinds["read"], "uploads_per_step": kinds["upload"],
                     "per_run": len(events[3]) - 3 * per_step})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | method | size (px) | waits per step | of which reads / blocking uploads | once per run |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['family']} | {r['method']} | {r['size']} | {r['per_step']:.1f} | "
                   f"{r['reads_per_step']:.1f} / {r['uploads_per_step']:.1f} | {r['per_run']:.0f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=None, help="also count on this checkout (a subprocess)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.emit_json:
        print(json.dumps(count()))
        return
    result = {"this tree": count()}
    if args.tree:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.tree))
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--emit-json"], cwd=args.tree, env=env,
                              capture_output=True, text=True, check=True)
        result[args.tree] = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, rows in result.items():
        print(f"{name}:\n{table(rows)}\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"argv": sys.argv[1:], "results": result}, f, indent=1)


if __name__ == "__main__":
    main()

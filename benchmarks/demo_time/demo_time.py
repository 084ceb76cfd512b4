"""How long the README's main job, ``anysize demo``, takes: this checkout and, optionally, others.

Each tree's demo runs as its own process (the command a new user types: model load, every cell,
the sheet, the JSON), in turn, in the same invocation, so the ratio between trees is measured side
by side. Prints wall-clock and CPU seconds per tree, the cells, and the slowest cells from the JSON
the demo writes. CPU seconds are the robust figure on a busy machine (the toy model runs on one
intra-op thread per call in the tests, but the CLI uses every core: on 2 quiet cores wall ≈ CPU / 1..2).

    python benchmarks/demo_time/demo_time.py                       # this checkout
    python benchmarks/demo_time/demo_time.py --tree /tmp/old       # and an older checkout, side by side
    python benchmarks/demo_time/demo_time.py --json benchmarks/demo_time/demo_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_demo(tree: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "anysize", "demo", "--out", str(out / "sheet.png"), "--force"],
                          cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"demo in {tree} failed:\n{proc.stderr[-2000:]}")
    cells = json.loads((out / "sheet.json").read_text())["cells"]
    bars = proc.stderr.count("\r") + proc.stderr.count("\n")
    return {
        "tree": str(tree), "wall_s": round(wall, 1),
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
        "cells": len(cells), "methods": sorted({c["method"] for c in cells}),
        "cell_seconds": round(sum(c["seconds"] for c in cells), 1),
        "slowest": sorted(({"cell": f"{c['method']} {c['column']}", "s": c["seconds"]} for c in cells),
                          key=lambda r: -r["s"])[:5],
        "stderr_lines": bars,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=[], help="another checkout to time as well (repeatable)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    rows = []
    for tree in [ROOT, *map(Path, args.tree)]:
        with tempfile.TemporaryDirectory() as d:
            rows.append(run_demo(tree.resolve(), Path(d)))
    load = os.getloadavg()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f} at the end"
    print(f"machine: {machine}")
    print("| tree | wall s | CPU s | cells | methods | cell seconds | stderr lines |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {r['wall_s']} | {r['cpu_s']} | {r['cells']} | {len(r['methods'])} | {r['cell_seconds']} "
              f"| {r['stderr_lines']} |")
    for r in rows:
        print(f"slowest cells, {r['tree']}: " + ", ".join(f"{c['cell']} {c['s']} s" for c in r["slowest"]))
    if len(rows) > 1:
        ratios = ", ".join(f"{r['wall_s'] / rows[0]['wall_s']:.2f}" for r in rows[1:])
        print(f"wall-clock ratio, other / this: {ratios}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

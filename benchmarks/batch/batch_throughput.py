"""`anysize batch` vs a shell loop of `anysize generate`, and `--batch 1/4/8`, on the toy model.

    python benchmarks/batch/batch_throughput.py [--jobs 64] [--steps 4] [--out benchmarks/batch]

All runs generate the same 64 jobs (toy captions, seeds 0..63, 128x128, the embedded toy model,
CPU, one thread per process as `anysize batch` pins it):

* `loop`: a bash loop of 64 `anysize generate PROMPT --seed i` commands, one process (and one
  model load) per image, as a script without a batch runner does it;
* `batch N`: one `anysize batch jobs.jsonl --batch N` process, for N = 1, 4 and 8.

Each is timed from the shell (wall time, process start to exit, every load included): images/s
and the ratio to the loop. The share of wall time outside the network's forward calls is measured
in-process (`anysize.batch` with the adapter's forward timed), for each --batch N, since a
subprocess cannot be instrumented without changing it. Writes batch_throughput.json and
batch_throughput.md beside this script (or into --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def jobs_file(path: Path, n: int, steps: int) -> list[dict]:
    from anysize.toy.data import BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES

    rows = []
    for i in range(n):
        colour = OBJECT_COLOURS[i % len(OBJECT_COLOURS)]
        shape = SHAPES[(i // len(OBJECT_COLOURS)) % len(SHAPES)]
        bg = [c for c in BACKGROUND_COLOURS if c != colour][i % (len(BACKGROUND_COLOURS) - 1)]
        rows.append({"id": f"job{i:03d}", "prompt": f"a {colour} {shape} on a {bg} background", "seed": i,
                     "steps": steps})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def timed(cmd: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def network_share(jobs: Path, tmp: Path, batch: int) -> dict:
    """In-process: wall seconds of anysize.batch, and of them the seconds inside the network's forward."""
    import torch

    import anysize

    torch.set_num_threads(1)
    model = anysize.load()
    forward = model._forward
    inside = [0.0]

    def timed_forward(*a, **kw):
        t0 = time.perf_counter()
        try:
            return forward(*a, **kw)
        finally:
            inside[0] += time.perf_counter() - t0

    model._forward = timed_forward
    t0 = time.perf_counter()
    anysize.batch(model, jobs, tmp / f"inproc{batch}", batch_size=batch, progress=False)
    wall = time.perf_counter() - t0
    return {"inproc_wall_s": wall, "network_s": inside[0], "outside_network_share": 1 - inside[0] / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from anysize.eval.timing import machine

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    py = shlex.quote(sys.executable)
    results: dict = {"jobs": args.jobs, "steps": args.steps, "size": "128x128", "model": "embedded toy model",
                     "machine": machine("cpu"), "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = jobs_file(tmp / "jobs.jsonl", args.jobs, args.steps)
        loop = " ; ".join(
            f"{py} -m anysize generate {shlex.quote(r['prompt'])} --seed {r['seed']} --steps {args.steps} "
            f"--out {tmp}/loop/{r['id']}.png --quiet" for r in rows)
        wall = timed(loop, env)
        results["runs"]["loop"] = {"wall_s": wall, "images_per_s": args.jobs / wall}
        for n in (1, 4, 8):
            wall = timed(f"{py} -m anysize batch {tmp}/jobs.jsonl --out {tmp}/b{n} --batch {n} --quiet", env)
            results["runs"][f"batch {n}"] = {"wall_s": wall, "images_per_s": args.jobs / wall}
            # the batch 1 images are the generate loop's, byte for byte (same seeds, same metadata)
            if n == 1:
                same = all((tmp / "loop" / f"{r['id']}.png").read_bytes() == (tmp / "b1" / f"{r['id']}.png").read_bytes()
                           for r in rows)
                results["batch1_png_identical_to_generate"] = same
        for n in (1, 4, 8):
            results["runs"][f"batch {n}"].update(network_share(tmp / "jobs.jsonl", tmp, n))
    base = results["runs"]["loop"]["images_per_s"]
    for r in results["runs"].values():
        r["vs_loop"] = r["images_per_s"] / base
    out = Path(args.out)
    (out / "batch_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| run | wall s | images/s | × loop | share of in-process wall time outside network calls |",
             "|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        share = f"{100 * r['outside_network_share']:.0f} %" if "outside_network_share" in r else "-"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {r['vs_loop']:.2f} | {share} |")
    (out / "batch_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

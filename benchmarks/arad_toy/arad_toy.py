"""ARAD in miniature: does a multi-aspect LoRA fix the toy model's composition at non-square sizes?

The embedded toy model was trained on square 128-px images only. At 1:2, 2:1, 9:16 and 16:9 it
tends to repeat or misplace its one object, as SD does at ratios it was not trained on. This
script (1) writes a multi-aspect toy dataset (one centred object per image, the nine ARAD
buckets scaled to 128 px), (2) runs `anysize train-arad` on it (resumable: rerunning continues),
(3) fuses the LoRA into a copy of the model, and (4) measures composition with `direct`
generation at the bucket sizes of the four ratios, before and after, on the same prompts and seeds.

    python benchmarks/arad_toy/arad_toy.py --work /tmp/arad-toy --steps 400 --lr 1e-3 --rank 8 --n 64

writes arad_toy.{json,md} beside this script. Step (2) is by far the longest (about 1.5-4 s per step of
batch 8 on a 2-core CPU; minutes on a GPU). On a GPU, with mixed precision:

    python benchmarks/arad_toy/arad_toy.py --work /tmp/arad-gpu --device cuda --mixed-precision fp16 \
        --out benchmarks/arad_toy/arad_toy_gpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (label, width, height): the toy-scaled ARAD buckets of the four ratios the issue names
RATIOS = [("1:2", 128, 256), ("2:1", 256, 128), ("9:16", 144, 256), ("16:9", 256, 144)]
COLUMNS = [("duplication_rate", "dup"), ("single_object_rate", "one"), ("fidelity_rate", "fidelity"),
           ("mean_centre_offset", "centre off."), ("border_touch_rate", "cut off")]


def fuse(lora_dir: Path, out: Path) -> Path:
    """A copy of the embedded model with the LoRA merged into its weights (a plain diffusers folder)."""
    from diffusers import StableDiffusionPipeline

    from anysize.defaults import default_model_path

    pipe = StableDiffusionPipeline.from_pretrained(str(default_model_path()))
    pipe.load_lora_weights(str(lora_dir))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(str(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/arad-toy", help="dataset, run and fused model (default: %(default)s)")
    ap.add_argument("--images", type=int, default=4500, help="training images (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--n", type=int, default=64, help="images per ratio and model (default: %(default)s)")
    ap.add_argument("--gen-steps", type=int, default=20, help="denoising steps (default: the toy's 20)")
    ap.add_argument("--out", default=str(HERE / "arad_toy.json"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for training and generation (default: cpu)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                    help="train-arad's --mixed-precision (default: no)")
    args = ap.parse_args()

    import anysize
    from anysize.buckets import scaled_buckets
    from anysize.toy.benchmark import composition_benchmark
    from anysize.toy.data import write_aspect_dataset

    work = Path(args.work)
    data, run, fused = work / "data", work / "run", work / "fused"
    if not data.is_dir():
        sizes = [(b.height, b.width) for b in scaled_buckets(128, 4)]
        write_aspect_dataset(data, args.images, sizes, seed=100)  # seed 100: not the eval prompts' seeds
    train_cmd = [sys.executable, "-m", "anysize", "train-arad", str(data), "--out", str(run), "--steps", str(args.steps),
                 "--batch", str(args.batch), "--lr", str(args.lr), "--rank", str(args.rank),
                 "--mixed-precision", args.mixed_precision, "--checkpoint-every", "50", "--quiet"]
    if args.device == "cpu":
        train_cmd += ["--device", "cpu"]
    t0 = time.perf_counter()
    subprocess.run(train_cmd, check=True)
    train_seconds = time.perf_counter() - t0
    if not (fused / "model_index.json").is_file():
        fuse(run, fused)

    results = []
    for label, model in (("before (square-trained toy)", None), ("after ARAD LoRA", str(fused))):
        adapter = anysize.load(model, device=args.device)
        for ratio, w, h in RATIOS:
            r = composition_benchmark(adapter, method="direct", width=w, height=h, n=args.n, seed=0,
                                      steps=args.gen_steps, progress=False)
            results.append({"model": label, "ratio": ratio, "size": f"{w}x{h}", "summary": r["summary"]})
            print(label, ratio, {k: r["summary"][k] for k, _ in COLUMNS}, flush=True)

    info = json.loads((run / "arad.json").read_text())
    from anysize.eval.timing import machine

    report = {"machine": machine(args.device), "train_command": " ".join(["anysize"] + train_cmd[3:]), "train": info, "train_seconds_this_call": train_seconds,
              "n": args.n, "gen_steps": args.gen_steps, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    lines = ["| ratio | size | model | " + " | ".join(c for _, c in COLUMNS) + " |", "|" + "---|" * (3 + len(COLUMNS))]
    for r in results:
        s = r["summary"]
        cells = [f"{100 * s[k]:.0f} %" if k != "mean_centre_offset" else ("—" if s[k] is None else f"{s[k]:.2f}")
                 for k, _ in COLUMNS]
        lines.append(f"| {r['ratio']} | {r['size']} | {r['model']} | " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    Path(args.out).with_suffix(".md").write_text(
        f"# ARAD on the toy model (n = {args.n} per cell, direct, {args.gen_steps} steps)\n\n{md}\n\n"
        f"Training: `{report['train_command']}` ({info['config']['steps']} steps; entries per bucket "
        f"{info['entries_per_bucket']}).\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

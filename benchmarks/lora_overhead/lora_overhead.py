"""What a run's LoRA costs: attaching and removing it, and a whole run with it vs without.

    PYTHONPATH=. python benchmarks/lora_overhead/lora_overhead.py --json benchmarks/lora_overhead/lora_overhead.json

1. The embedded toy model (SD 1.5-structured), ``direct`` at 128x128 and 256x256, 20 steps: the
   time of ``anysize.generate`` with a rank-8 LoRA on every attention projection vs without, runs
   interleaved, median of ``--repeats``; and the time of attaching and removing it alone. The rest
   of the difference is the LoRA layers' own work at every network call (peft adds B·A·x beside
   each projection; anysize does not fuse them into the weights, which could not be undone bit for bit).
2. The SD 1.5 architecture at its real widths (``reduced`` profile, random weights): the time of
   attaching and removing one rank-16 LoRA on every attention projection (``adapter.loras``, i.e.
   diffusers' ``load_lora_weights`` + ``set_adapters`` + ``delete_adapters`` +
   ``unload_lora_weights``), with no generation, median of ``--repeats``; and the check that the
   network is bit-identical afterwards.

CPU, 1 thread by default (``--threads``). The LoRAs are random, made with peft, saved with the
pipeline class's ``save_lora_weights`` into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_lora(pipe, folder: Path, rank: int) -> Path:
    """A random LoRA of ``rank`` on the U-Net's attention projections, saved the diffusers way."""
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(pipe.unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    type(pipe).save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)
    return folder


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generation_overhead(repeats: int, steps: int, tmp: Path) -> list[dict]:
    import anysize

    from anysize.lora import check_loras

    model = anysize.load()
    lora = make_lora(model.pipe, tmp / "toy-lora", rank=8)
    checked = check_loras(lora)

    def attach():
        with model.loras(checked):
            pass

    attach()
    attach_s = statistics.median(timed(attach) for _ in range(repeats))
    rows = []
    for side in (128, 256):
        def run(**kw):
            return anysize.generate(model, "a red triangle on a blue background", width=side, height=side,
                                    steps=steps, seed=0, progress=False, output_type="latent", **kw)

        run(), run(lora=lora)  # warm-up (and the LoRA file's hash, cached)
        plain, with_lora = [], []
        for _ in range(repeats):
            plain.append(timed(run))
            with_lora.append(timed(lambda: run(lora=lora)))
        p, w = statistics.median(plain), statistics.median(with_lora)
        rows.append({"model": "toy (embedded)", "size": f"{side}x{side}", "steps": steps, "plain_s": round(p, 4),
                     "lora_s": round(w, 4), "ratio": round(w / p, 3), "extra_s": round(w - p, 4),
                     "attach_remove_s": round(attach_s, 4)})
    return rows


def attach_cost(repeats: int, tmp: Path) -> dict:
    from anysize.builders import build_pipeline
    from anysize.lora import check_loras
    from anysize.models import adapt

    pipe = build_pipeline("sd1", "reduced")
    adapter = adapt(pipe)
    lora = check_loras(make_lora(pipe, tmp / "sd15-lora", rank=16))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    def attach():
        with adapter.loras(lora):
            pass

    attach()
    times = [timed(attach) for _ in range(repeats)]
    after = pipe.unet.state_dict()
    identical = list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    size = lora[0].weights.stat().st_size
    return {"model": "SD 1.5 widths (reduced profile)", "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6),
            "lora_rank": 16, "lora_file_mib": round(size / 2**20, 2), "attach_remove_s": round(statistics.median(times), 4),
            "bit_identical_after": identical}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = generation_overhead(args.repeats, args.steps, Path(tmp))
        attach = attach_cost(args.repeats, Path(tmp))
    print("| model | size | steps | without LoRA (s) | with LoRA (s) | ratio | extra per run (s) | of which attach + remove (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['steps']} | {r['plain_s']:.3f} | {r['lora_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['extra_s']:.3f} | {r['attach_remove_s']:.3f} |")
    print(f"\n{attach['model']}, {attach['unet_params_m']}M U-Net parameters, a rank-{attach['lora_rank']} LoRA "
          f"({attach['lora_file_mib']} MiB): attach + remove {attach['attach_remove_s']:.3f} s; network bit-identical "
          f"after: {attach['bit_identical_after']}")
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                   "torch": torch.__version__}
        args.json.write_text(json.dumps({"machine": machine, "generation": rows, "attach": attach}, indent=1) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()

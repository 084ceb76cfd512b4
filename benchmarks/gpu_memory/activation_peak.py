"""The activation peak of one network call at a canvas, estimated on the CPU from shapes alone.

Issue 23, goal 5 asks for an 8192² SDXL-architecture image within 24 GB of CUDA allocator peak.
The window methods (fstd, multidiffusion, asd's upscaler) call the network on native-size tiles, so
their peak does not grow with the canvas; scalediff's last stage and direct call it on the whole
canvas. This script builds the real architecture on PyTorch's ``meta`` device (shapes, no data) and
runs one network call through the adapter (``ModelAdapter.predict``: the code path of a real run,
size conditioning and token packing included) under :class:`anysize.eval.live_bytes.LiveBytes`,
with attention counted as a flash kernel allocates (:class:`~anysize.eval.live_bytes.FlashAttentionMemory`).
It takes seconds on a CPU, for any size.

Per architecture x size x batch it prints the activation peak of the call (batch 2 = one CFG call
on [negative; positive], batch 1 = one of its halves, which ``predict_guided`` runs one after the
other where the batched call does not fit), optionally under scalediff's NPA patch (``--npa``),
and the weights the call needs on the device (the denoiser, and a VAE of the released layout). The
sum is a lower bound of the CUDA allocator peak of that call: the text encoders' weights (kept on
the device by a run; the builders' are stand-ins), workspaces, the allocator's rounding and
fragmentation come on top (see the module docstring of ``anysize.eval.live_bytes``).

    python benchmarks/gpu_memory/activation_peak.py --archs sdxl --sizes 2048x2048 4096x4096 8192x8192 \\
        --batch 1 2 --npa --out benchmarks/gpu_memory/activation_peak_sdxl.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from anysize import bench as _bench  # noqa: E402
from anysize.cli.inputs import parse_size  # noqa: E402
from anysize.eval.live_bytes import FlashAttentionMemory, LiveBytes, module_bytes  # noqa: E402
from anysize.models import adapt  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GIB = 2**30


def build(arch: str, dtype: torch.dtype, reduced: bool):
    """The architecture's adapter with every weight on the meta device (nothing allocated), with a VAE
    of the released layout (its weights are counted; the builders' stand-in is a few kB)."""
    from anysize.builders.parts import released_vae

    pipe = _bench.build_architecture(arch, reduced=reduced, device="meta", dtype=dtype)
    pipe.vae = released_vae(pipe.vae, device="meta", dtype=dtype)
    return adapt(pipe)


def weights(adapter) -> dict[str, int]:
    """The weights a call needs on the device: the denoiser and the VAE (the builders' text encoders
    are small stand-ins, so the real ones are left out of the sum: see the README)."""
    return {"network": module_bytes(adapter.network), "vae": module_bytes(adapter.vae)}


def call_peak(adapter, width: int, height: int, batch: int, *, npa: bool) -> dict:
    """Activation peak (bytes) of one ``adapter.predict`` on a ``batch`` x canvas of latents (None:
    batch 2 of a model without CFG)."""
    f = adapter.vae_factor
    cond = adapter.encode_prompt(["a photo"], [""], guidance_scale=7.5)
    if batch == 2 and not cond.do_cfg:  # FLUX.1-dev: guidance distilled into the network, one call per image
        return None
    embeds = cond.for_cfg() if batch == 2 else cond.positive
    x = torch.empty(batch, adapter.latent_channels, height // f, width // f, device="meta", dtype=adapter.dtype)
    t = torch.tensor(500.0, device="meta") if adapter.scheduler_kind == "diffusion" else torch.tensor(0.5, device="meta")
    patch = contextlib.nullcontext()
    if npa:
        from anysize.patches.npa import NPAPatch

        patch = NPAPatch(adapter, seed=[0] * batch)
    meter = LiveBytes()
    start = time.perf_counter()
    with torch.no_grad(), patch, FlashAttentionMemory(), meter:
        out = adapter.predict(x, t, embeds)
    if tuple(out.shape) != tuple(x.shape):
        raise RuntimeError(f"the network returned {tuple(out.shape)} for latents {tuple(x.shape)}")
    return {"cfg": cond.do_cfg, "peak_bytes": meter.peak, "allocations": meter.allocations,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["sdxl"], choices=[a for a in _bench.ARCHITECTURES if a != "toy"])
    p.add_argument("--sizes", nargs="+", default=["2048x2048", "4096x4096", "8192x8192"], metavar="WxH")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 2], choices=[1, 2],
                   help="2: the batched CFG call; 1: one of its halves")
    p.add_argument("--npa", action="store_true",
                   help="also under scalediff's NPA patch (its attention at the canvas; U-Nets only: on SD3 and FLUX "
                   "the patch reads the token positions, data that meta tensors do not have)")
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--reduced", action="store_true", help="the reduced-depth profile (tests)")
    p.add_argument("--out", type=Path, default=None, help="JSON (and a .md table beside it)")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes]
    rows, held = [], {}
    for arch in args.archs:
        adapter = build(arch, DTYPES[args.dtype], args.reduced)
        held[arch] = weights(adapter)
        for w, h in sizes:
            # NPA on the DiTs reads the token positions (data, which meta tensors do not have)
            for npa in ([False, True] if args.npa and adapter.family not in ("sd3", "flux") else [False]):
                for b in args.batch:
                    r = call_peak(adapter, w, h, b, npa=npa)
                    if r is None:
                        continue
                    rows.append({"arch": arch, "width": w, "height": h, "batch": b, "npa": npa, **r})
                    print(format_row(rows[-1], held[arch]), flush=True)
    report = {"config": {"archs": args.archs, "sizes": args.sizes, "batch": args.batch, "npa": args.npa,
                         "dtype": args.dtype, "reduced": args.reduced, "torch": torch.__version__},
              "weights_bytes": held, "rows": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(format_table(report) + "\n", encoding="utf-8")
    return report


def format_row(r: dict, held: dict) -> str:
    total = r["peak_bytes"] + sum(held.values())
    return (f"{r['arch']} {r['width']}x{r['height']} batch {r['batch']}{' npa' if r['npa'] else ''}: "
            f"activations {r['peak_bytes'] / GIB:.2f} GiB, with the weights {total / GIB:.2f} GiB")


def format_table(report: dict) -> str:
    lines = ["| arch | size | call | activation peak GiB | + denoiser and VAE weights GiB |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        held = sum(report["weights_bytes"][r["arch"]].values())
        call = ("CFG batched (2)" if r["batch"] == 2 else "one CFG half (1)" if r["cfg"] else "one call (1, no CFG)")
        call += ", NPA" if r["npa"] else ""
        lines.append(f"| {r['arch']} | {r['width']}x{r['height']} | {call} | {r['peak_bytes'] / GIB:.2f} | "
                     f"{(r['peak_bytes'] + held) / GIB:.2f} |")
    lines.append("")
    for arch, held in report["weights_bytes"].items():
        lines.append(f"{arch} weights ({report['config']['dtype']}): denoiser {held['network'] / GIB:.2f} GiB, "
                     f"VAE of the released layout {held['vae'] / GIB:.2f} GiB; text encoders not counted.")
    lines.append("Activation peak: the live tensors of one network call on the meta device (flash-attention "
                 "memory); the CUDA allocator adds workspaces, rounding and fragmentation.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

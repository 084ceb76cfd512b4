"""What anysize's HiDiffusion and the official ``hidiffusion`` package ask of the device, per U-Net call.

A GPU run is fast when the host (a) launches no more kernels than needed, (b) never waits for the
device in the middle of a step and (c) spends little Python time per launched kernel. All three
can be counted on a CPU, side by side in one run, on the real SD 1.5 and SDXL block layouts
(reduced widths, as ``benchmarks/hidiffusion_speed/hidiffusion_speed.py``; counts do not depend on widths):

* **operators dispatched** per U-Net call (every ATen operator reaching the backend: a kernel
  launch on a GPU, except views) and the ones whose counts differ between the implementations;
* **device reads** per U-Net call: host reads of values that live on the GPU in a real run
  (``anysize.testing.syncs.HostSyncAudit``, rooted at each call's latents and timestep);
* **host time** per step with negligible compute (widths divided by 40, a tiny latent): the
  Python and dispatch cost of a step, which on a GPU overlaps the kernels unless something
  makes the host wait.

    PYTHONPATH=. python benchmarks/hidiffusion_dispatch/hidiffusion_dispatch.py --json benchmarks/hidiffusion_dispatch/hidiffusion_dispatch.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import importlib
import json
import os
import statistics
import sys
import time
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import anysize
from anysize.eval.timing import machine
from anysize.testing.syncs import HostSyncAudit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hidiffusion_speed"))  # the sibling study's pipelines
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
from hidiffusion_official import OFFICIAL_NAMES, load_official  # noqa: E402
from hidiffusion_speed import ARCHS, make_pipe  # noqa: E402

VIEWS = {"view", "_unsafe_view", "reshape", "select", "slice", "permute", "transpose", "t", "expand", "unsqueeze",
         "squeeze", "as_strided", "alias", "detach", "split", "chunk", "unbind", "flatten", "_reshape_alias",
         "split_with_sizes", "unflatten", "view_as"}


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _official_profiles(scale_sdxl: int):
    module = importlib.import_module("hidiffusion.hidiffusion")
    ratios = module.switching_threshold_ratio_dict
    ratios["sd15_1024"] = dict(ratios["sd15_2048"])  # as hidiffusion_speed.py: the same schedule as ours
    if scale_sdxl >= 4:
        ratios["sdxl_2048"] = dict(ratios["sdxl_4096"])
        module.is_aggressive_raunet = False


def _pipes(arch: str, div: int, hd):
    pipe, widths, native = make_pipe(arch, div)
    official = make_pipe(arch, div, unet=copy.deepcopy(pipe.unet))[0]
    official.register_to_config(_name_or_path=OFFICIAL_NAMES[ARCHS[arch]["family"]])
    hd.apply_hidiffusion(official)
    return pipe, official, native * ARCHS[arch]["scale"] * 8


def _impls(pipe, official, side: int, steps: int):
    def run(p):
        torch.manual_seed(1234)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return p("a red square", height=side, width=side, num_inference_steps=steps, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(0), output_type="latent").images

    def ours():
        with anysize.patch(pipe, "hidiffusion", shift_source="global"):
            return run(pipe)

    return {"direct": lambda: run(pipe), "anysize": ours, "official": lambda: run(official)}


def _device_reads(pipe, fn) -> tuple[int, int, str]:
    """(device reads, U-Net calls, report) of one run: each call's sample and timestep are device roots."""
    audit = HostSyncAudit(package="/", ignore=("diffusers/schedulers/", "diffusers/pipelines/"))
    calls = [0]

    def mark(module, args, kwargs):
        calls[0] += 1
        for v in list(args[:2]) + [kwargs.get("sample"), kwargs.get("timestep")]:
            if isinstance(v, torch.Tensor):
                audit.mark(v)

    handle = pipe.unet.register_forward_pre_hook(mark, with_kwargs=True)
    try:
        with audit:
            fn()
    finally:
        handle.remove()
    return len(audit.events), calls[0], audit.report()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    hd = load_official()
    if hd is None:
        sys.exit("the official hidiffusion package is needed (tests/hidiffusion_official.py explains how)")
    _official_profiles(ARCHS["sdxl"]["scale"])
    records = []
    print(f"torch {torch.__version__}, 1 thread; {args.steps} steps, CFG (one U-Net call per step)\n")
    for arch in args.archs:
        # counts: reduced widths (div 8) at the real scale over native
        pipe, official, side = _pipes(arch, 8, hd)
        impls = _impls(pipe, official, side, args.steps)
        counts, reads = {}, {}
        for name, fn in impls.items():
            fn()  # warm-up (lazy initialisation)
            mode = OpCount()
            with mode:
                fn()
            counts[name] = mode.ops
            target = official if name == "official" else pipe
            n, calls, report = _device_reads(target, fn)
            reads[name] = (n, calls, report)
        # host time: tiny widths and latent, so compute is negligible
        tpipe, tofficial, tside = _pipes(arch, 40, hd)
        timpls = _impls(tpipe, tofficial, tside, args.steps)
        for fn in timpls.values():
            fn()
        host = {k: [] for k in timpls}
        for r in range(args.repeats):
            order = list(timpls.items())
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                fn()
                host[name].append((time.perf_counter() - t) / args.steps * 1000)
        host = {k: statistics.median(v) for k, v in host.items()}
        per_call = {k: sum(v.values()) / args.steps for k, v in counts.items()}
        kernels = {k: sum(n for op, n in v.items() if op not in VIEWS) / args.steps for k, v in counts.items()}
        ops = sorted(set().union(*counts.values()))
        differ = {op: {k: counts[k][op] / args.steps for k in counts} for op in ops
                  if counts["anysize"][op] != counts["official"][op]}
        compute_equal = all(op in VIEWS or op in ("_local_scalar_dense", "gt", "le", "lt", "ge") for op in differ)
        print(f"{arch} at {ARCHS[arch]['scale']}x native per side (side {side} px at widths/8)")
        print("| | direct | anysize | official |")
        print("|---|---|---|---|")
        print(f"| operators dispatched per U-Net call | {per_call['direct']:.0f} | {per_call['anysize']:.0f} | "
              f"{per_call['official']:.0f} |")
        print(f"| of which not views (GPU kernels, plus host-side scalar ops) | {kernels['direct']:.0f} | {kernels['anysize']:.0f} | "
              f"{kernels['official']:.0f} |")
        print(f"| device reads per U-Net call | {reads['direct'][0] / reads['direct'][1]:.2f} | "
              f"{reads['anysize'][0] / reads['anysize'][1]:.2f} | {reads['official'][0] / reads['official'][1]:.2f} |")
        print(f"| host ms per step, negligible compute | {host['direct']:.1f} | {host['anysize']:.1f} | "
              f"{host['official']:.1f} |")
        print("operators whose count differs (per call, anysize vs official): " + (", ".join(
            f"{op} {v['anysize']:.1f} vs {v['official']:.1f}" for op, v in differ.items()) or "none"))
        print(f"compute operators identical in kind and number: {compute_equal}\n")
        for name in ("anysize", "official"):
            if reads[name][0]:
                print(f"{name} device reads:\n{reads[name][2]}\n")
        records.append({"architecture": arch, "ops_per_call": per_call, "kernels_per_call": kernels,
                        "device_reads_per_call": {k: v[0] / v[1] for k, v in reads.items()},
                        "host_ms_per_step": host, "differing_ops_per_call": differ,
                        "compute_ops_identical": compute_equal})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine("cpu"), "argv": sys.argv[1:], "steps": args.steps, "results": records}, f, indent=1)


if __name__ == "__main__":
    main()

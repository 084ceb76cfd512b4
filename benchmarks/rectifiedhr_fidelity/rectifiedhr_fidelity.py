"""anysize's `rectifiedhr` against the official RectifiedHR SDXL pipeline, phase by phase.

    python benchmarks/rectifiedhr_fidelity/rectifiedhr_fidelity.py --official /tmp/RectifiedHR \
        [--json benchmarks/rectifiedhr_fidelity/rectifiedhr_fidelity.json]

``--official`` is a local copy of EnVision-Research/RectifiedHR (this repository holds none of its
code); the script loads ``pipelines/pipeline_sdxl.py``, ``utils/main_tools.py`` and
``utils/preprocess.py`` from it by path. ``run_sdxl.py`` cannot run here (its config makes a CUDA
generator and loads SDXL from a local folder), so :func:`official_run` replays its ``main()`` loop
statement for statement with the official pipeline class and helpers on anysize's tiny
random-weight SDXL pipeline (native 128 px), with ``output_type="latent"`` (the official loop
discards every phase's image but the last; no number changes).

Both sides use DDIM with the released SDXL scheduler config's ``clip_sample=False`` and
``set_alpha_to_one=False`` (the scheduler ``run_sdxl.py`` sets), the same prompt and negative
prompt, CFG 5 as the first phase's scale (official ``cfg_min``), and the official config whose
scale the target has (anysize's default presets). Randomness is pinned by construction: both
draw the first noise and then every refresh's noise from one generator seeded with the same seed
(DDIM with eta 0 draws nothing else).

The VAE round trip of a refresh: the official ``image2latent``/``latent2image`` cast the whole
pipeline to bfloat16 and back. Three runs are made:

* ``fp32``: the ``torch`` those two helpers see is a stand-in whose ``bfloat16`` is ``float32``
  (nothing else changes), so both sides decode, quantise to 8 bits, resize and encode in float32;
* ``fp32, decode pinned``: the same, with anysize's decoder input scaled as ``latent2image`` scales
  it (``(1/s)·z`` instead of ``z/s``, patched into the adapter here): the two differ by float
  rounding (~4e-6 in the decoded image), which moves a few pixels of the 8-bit image by one level;
* ``as is``: the official bfloat16 round trip, on its own copy of the tiny pipeline. Its cast back
  leaves every weight rounded to bfloat16, so the phases after the first refresh also run with
  bfloat16-rounded U-Net weights.

Import shims: ``utils/preprocess.py`` imports ``cv2`` and ``einops`` (not installed), used only by
its video helpers; stand-in modules satisfy those two imports (a ``cv2`` with nothing in it and an
``einops`` whose ``rearrange`` raises if called).

Printed per case: the max abs difference of the state after every phase's last step, of the clean
estimate each refresh starts from (before and after the resize) and of the re-noised start of each
later phase, and of the final latents.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anysize  # noqa: E402
from anysize.builders import tiny_pipeline  # noqa: E402
from anysize.methods import rectifiedhr as rhr  # noqa: E402
from anysize.models import adapt  # noqa: E402

PROMPT = "a red circle on a blue square"
NEGATIVE = "blurry veins, flat lighting, unrealistic frost, cluttered background"  # run_sdxl.py's
STEPS = 10
GUIDANCE = 5.0  # official cfg_min
SEED = 2025  # official seed
#: (height, width) px: 2x (2048² config), 3x (2048x4096 config), 4x (4096² config), 1:2 (tall, as
#: the official 2048x4096 example) and 5:3, a ratio that is not a power of two
SIZES = [(256, 256), (384, 384), (512, 512), (256, 128), (192, 320)]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Float32AsBfloat16(types.ModuleType):
    """``torch``, except that ``bfloat16`` is ``float32`` (for the official VAE helpers only)."""

    def __init__(self):
        super().__init__("torch")
        self.bfloat16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


def load_official(root: Path):
    for stub in ("cv2", "einops"):  # imported by preprocess.py for its video helpers only
        if stub not in sys.modules:
            try:
                importlib.import_module(stub)
            except ImportError:
                sys.modules[stub] = types.ModuleType(stub)
    if not hasattr(sys.modules["einops"], "rearrange"):
        def rearrange(*args, **kwargs):
            raise RuntimeError("einops is a stand-in here: the official video helpers are not used")
        sys.modules["einops"].rearrange = rearrange
    pipeline = load(root / "pipelines" / "pipeline_sdxl.py", "rhr_official_pipeline_sdxl")
    tools = load(root / "utils" / "main_tools.py", "rhr_official_main_tools")
    pre = load(root / "utils" / "preprocess.py", "rhr_official_preprocess")
    return pipeline, tools, pre


def ddim_pipeline():
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline("sdxl")
    # the released SDXL scheduler config's DDIM settings (the tiny one has Euler's defaults)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    return pipe


def official_run(official, pipe, cfg: dict, height: int, width: int, bf16: bool) -> dict:
    """``run_sdxl.main()`` for one prompt with the config ``cfg``, recording every phase."""
    module, tools, pre = official
    pre.torch = torch if bf16 else Float32AsBfloat16()
    pipe = module.SDXLPipeline(**{k: v for k, v in pipe.components.items()})
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # run_sdxl: DDIM from the config
    n = STEPS
    refresh_step_list = tools.quantic_step(cfg["T_min"], n, cfg["N"], cfg["M_T"])
    cfg_list = tools.quantic_cfg(GUIDANCE, cfg["cfg_max"], cfg["N"], cfg["M_cfg"])
    resolution_list = tools.quantic_HW(cfg["res_min"], (height, width), cfg["N"])
    generator = torch.Generator("cpu").manual_seed(SEED)
    memory = {"predict_x0_list": []}
    rec = {"resolutions": resolution_list, "refresh_steps": refresh_step_list, "cfg": cfg_list,
           "phase_end": [], "x0": [], "x0_resized": [], "start": []}
    res_min = cfg["res_min"]
    start_latent = module.randn_tensor((1, 4, res_min[0] // pipe.vae_scale_factor, res_min[1] // pipe.vae_scale_factor),
                                       dtype=pipe.dtype, device=pipe.device, generator=generator)
    out = None
    for i in range(len(resolution_list)):
        if i == 0:
            noisy = start_latent
        else:
            rec["x0"].append(memory["predict_x0_list"][-1].clone())
            if resolution_list[i][1] == resolution_list[i - 1][1]:
                x0 = memory["predict_x0_list"][-1]
            else:
                x0 = pre.image2latent(pre.latent2image(memory["predict_x0_list"][-1], pipe).resize(
                    (resolution_list[i][1], resolution_list[i][0])), pipe)
            rec["x0_resized"].append(x0.clone())
            noise_ = module.randn_tensor(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
            noisy = pipe.scheduler.add_noise(x0, noise_, pipe.scheduler.timesteps[len(memory["predict_x0_list"]) - n])
            rec["start"].append(noisy.clone())
        out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, generator=generator, num_inference_steps=n,
                   guidance_scale=cfg_list[i], latents=noisy, MEMORY=memory,
                   strength=(n - len(memory["predict_x0_list"])) / n,
                   denoising_end=refresh_step_list[i + 1] / n, output_type="latent").images
        rec["phase_end"].append(out.clone())
    rec["final"] = out
    rec["steps_run"] = len(memory["predict_x0_list"])
    return rec


def anysize_run(pipe, height: int, width: int, pin_decode: bool) -> dict:
    """anysize's rectifiedhr with its defaults, recording what the official run records
    (``pin_decode``: the decoder input scaled as ``latent2image`` does, ``(1/s)·z`` for ``z/s``)."""
    adapter = adapt(pipe, native_size=16)
    assert adapter.vae_factor == 8  # the sizes below convert latent px to px with it
    if pin_decode:
        adapter._vae_latent_to_decoder = lambda z: 1 / adapter.vae.config.scaling_factor * z
    rec = {"phase_end": [], "x0": [], "x0_resized": [], "start": []}
    method = rhr.RectifiedHR()
    resize, from_x0 = method.resize, adapter.from_x0

    def spy_resize(request, x0, size):
        rec["x0"].append(x0.clone())
        out = resize(request, x0, size)
        rec["x0_resized"].append(out.clone())
        return out

    def spy_from_x0(scheduler, x0, noise, t):
        out = from_x0(scheduler, x0, noise, t)
        rec["start"].append(out.clone())
        return out

    last = {}

    def callback(info):
        last[info.stage] = info.latents.clone()

    method.resize, adapter.from_x0 = spy_resize, spy_from_x0
    try:
        result = anysize.generate(adapter, PROMPT, negative_prompt=NEGATIVE, height=height, width=width,
                                  method=method, steps=STEPS, guidance=GUIDANCE, seed=SEED, output_type="latent",
                                  progress=False, callback=callback)
    finally:
        del adapter.from_x0
    rec["phase_end"] = list(last.values())
    rec["final"] = result.latents
    rec["plan"] = method.plan(adapter, height // 8, width // 8, STEPS, GUIDANCE)
    return rec


def official_config(plan, settings: dict, height: int, width: int) -> dict:
    """The official config equivalent to anysize's preset for this target (res_min = its base)."""
    base = plan.sizes[0]
    return {"N": settings["phases"], "cfg_max": settings["guidance_max"], "M_cfg": settings["guidance_power"],
            "T_min": plan.bounds[1], "M_T": settings["refresh_power"], "res_min": (base[0] * 8, base[1] * 8)}


def diff(a, b) -> float:
    if a.shape != b.shape:
        return float("nan")
    return (a.float() - b.float()).abs().max().item()


MODES = {  # name: (official bfloat16 round trip, anysize's decoder input scaled as the official's)
    "fp32, decode pinned": (False, True),
    "fp32": (False, False),
    "bf16 (as is)": (True, False),
}


def compare(official, height: int, width: int, mode: str) -> dict:
    bf16, pin_decode = MODES[mode]
    ours = anysize_run(ddim_pipeline(), height, width, pin_decode)
    plan = ours["plan"]
    adapter = adapt(tiny_pipeline("sdxl"), native_size=16)
    settings = rhr.RectifiedHR().settings(adapter, height // 8, width // 8)
    cfg = official_config(plan, settings, height, width)
    theirs = official_run(official, ddim_pipeline(), cfg, height, width, bf16)
    assert theirs["refresh_steps"] == plan.bounds, (theirs["refresh_steps"], plan.bounds)
    assert [tuple(r) for r in theirs["resolutions"]] == [(h * 8, w * 8) for h, w in plan.sizes], theirs["resolutions"]
    assert all(abs(a - b) < 1e-12 for a, b in zip(theirs["cfg"], plan.guidance)), (theirs["cfg"], plan.guidance)
    assert theirs["steps_run"] == STEPS
    row = {"size": f"{width}x{height}", "mode": mode,  # W x H, as --size
           "phases": len(plan.sizes), "sizes_px": [f"{w * 8}x{h * 8}" for h, w in plan.sizes],
           "refresh_steps": plan.bounds, "cfg": [round(g, 4) for g in plan.guidance]}
    for key in ("phase_end", "x0", "x0_resized", "start"):
        row[key] = [diff(a, b) for a, b in zip(ours[key], theirs[key])]
        assert len(ours[key]) == len(theirs[key]), key
    row["final"] = diff(ours["final"], theirs["final"])
    row["latent_abs_max"] = ours["final"].abs().max().item()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="a local copy of EnVision-Research/RectifiedHR (the repo root)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    root = Path(args.official)
    official = load_official(root)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    torch.manual_seed(0)
    rows = []
    for mode in MODES:
        for h, w in SIZES:
            row = compare(official, h, w, mode)
            rows.append(row)
            fmt = lambda v: "[" + ", ".join(f"{x:.2g}" for x in v) + "]"  # noqa: E731
            print(f"{row['mode']:>19} {row['size']:>8} phases {row['phases']} {'/'.join(row['sizes_px'])} "
                  f"steps {row['refresh_steps']}: phase ends {fmt(row['phase_end'])}  x0 {fmt(row['x0'])}  "
                  f"resized {fmt(row['x0_resized'])}  starts {fmt(row['start'])}  final {row['final']:.2g} "
                  f"(|x| <= {row['latent_abs_max']:.3g})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "anysize": head.stdout.strip(), "official_commit": commit or "unknown", "steps": STEPS,
            "guidance": GUIDANCE, "seed": SEED, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

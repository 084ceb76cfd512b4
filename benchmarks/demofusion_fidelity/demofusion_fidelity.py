"""anysize's `demofusion` against the official DemoFusion pipeline, phase by phase.

    python benchmarks/demofusion_fidelity/demofusion_fidelity.py /tmp/demofusion/pipeline_demofusion_sdxl.py \
        [--json benchmarks/demofusion_fidelity/demofusion_fidelity.json]

The argument is a local copy of ``pipeline_demofusion_sdxl.py`` from PRIS-CV/DemoFusion (this
repository holds none of its code). Both run on the same tiny random-weight SDXL pipeline
(anysize's builder, native 128 px) at 2× and 3× the native side and at 2:1 (128x256), 4 steps, CFG 5, with the
official settings scaled to the tiny model (window = its 16-latent-px native size, stride 8,
so a jitter range of 2 px), and every random number pinned:

* the first noise: both draw it from a generator seeded with the same seed;
* the re-noising noise of each phase: the official code calls ``torch.randn_like`` on the global
  RNG; here that call returns the noise anysize drew for the same phase;
* the view jitter: the official code calls Python's ``random.randint``; here every call returns
  the value anysize drew at the same place, after checking that it asks for the same range.

Two anysize conventions are switched to the official ones for the comparison (both are listed as
deliberate differences in ``anysize/methods/demofusion.py``): the SDXL size conditioning (official:
original = target = the final size in every phase and view) is patched into anysize's adapter,
and runs are made with three schedulers:

* ``euler`` (the tiny SDXL's, like the released model's): the official code as it is. Its Euler
  input scaling reads a step index that its own per-view ``scheduler.step`` calls have moved
  on (see the method's docstring), so it differs from anysize by design;
* ``euler, index fixed``: the same with the official scheduler's ``scale_model_input`` patched to
  look its sigma up from the timestep, which removes only that defect;
* ``ddim`` (clip_sample off): no input scaling, so the official code runs unpatched
  (``DDIMScheduler`` has no ``_init_step_index``, which the official code calls: a no-op is added).

Printed: the max abs difference of the final latents of every phase (after each phase's
renormalisation to phase 1's statistics, what the next phase upsamples).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anysize  # noqa: E402
from anysize.builders import tiny_pipeline  # noqa: E402
from anysize.methods import demofusion as df  # noqa: E402
from anysize.models import adapt  # noqa: E402
from anysize.models.sdxl import SDXLAdapter  # noqa: E402

PROMPT = "a red circle on a blue square"
STEPS = 4
GUIDANCE = 5.0
SEED = 7
#: (height, width): 2x and 3x the native side, and 2:1 (the official code's aspect-ratio path)
SIZES = ((256, 256), (384, 384), (256, 128))


def load_official(path: str):
    spec = importlib.util.spec_from_file_location("official_demofusion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def diffusers_quiet():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def make_scheduler(kind: str, base):
    from diffusers import DDIMScheduler

    if kind == "ddim":
        return DDIMScheduler.from_config(base.config, clip_sample=False)
    return type(base).from_config(base.config)


def run_anysize(kind: str, height: int, width: int):
    """anysize's final latents per phase, with the noise and jitter it drew (in order)."""
    pipe = tiny_pipeline("sdxl")
    pipe.scheduler = make_scheduler(kind, pipe.scheduler)
    adapter = adapt(pipe, native_size=16)
    noises, jitters, outputs = [], [], []
    phase, draw, match = df.DemoFusion.phase, df.draw_jitter, df.match_statistics

    def spy_phase(self, request, z, size, gens, **kw):
        outputs.append(z.clone())
        p = phase(self, request, z, size, gens, **kw)
        noises.append(p.noise.clone())
        return p

    def spy_draw(generator, low, high):
        v = draw(generator, low, high)
        jitters.append((low, high, v))
        return v

    df.DemoFusion.phase, df.draw_jitter = spy_phase, spy_draw
    try:
        with official_time_ids(height, width):
            res = anysize.generate(adapter, PROMPT, height=height, width=width, steps=STEPS, seed=SEED,
                                   guidance=GUIDANCE, method="demofusion", output_type="latent", progress=False)
    finally:
        df.DemoFusion.phase, df.draw_jitter, df.match_statistics = phase, draw, match
    outputs.append(res.latents.clone())
    return pipe, outputs, noises, jitters


class official_time_ids:
    """anysize's SDXL adapter conditioned like the official pipeline: original = target = the final
    size, crop = the view's offset in its canvas."""

    def __init__(self, height: int, width: int):
        self.size = (height, width)

    def __enter__(self):
        self.saved = SDXLAdapter.time_ids
        h, w = self.size

        def time_ids(adapter, window, n, dtype, device=None):
            f = adapter.vae_factor
            windows = [window] * n if not isinstance(window, list) else window
            ids = [(h, w, win.top * f, win.left * f, h, w) for win in windows]
            return torch.tensor(ids, dtype=dtype, device=device or adapter.device)

        SDXLAdapter.time_ids = time_ids

    def __exit__(self, *exc):
        SDXLAdapter.time_ids = self.saved


def run_official(module, pipe, kind: str, height: int, width: int, noises, jitters, fix_index: bool):
    """The official pipeline's final latents per phase, fed anysize's noise and jitter."""
    scheduler = make_scheduler(kind, pipe.scheduler)
    if not hasattr(scheduler, "_init_step_index"):
        scheduler._init_step_index = lambda t: None
    if fix_index:
        def scale_model_input(sample, t):
            sigma = scheduler.sigmas[scheduler.index_for_timestep(t)]
            return sample / ((sigma**2 + 1) ** 0.5)

        scheduler.scale_model_input = scale_model_input
    official = module.DemoFusionSDXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False)
    official.set_progress_bar_config(disable=True)
    official.check_inputs = lambda *a, **k: None  # it refuses a long side that is not a multiple of 1024 px

    decoded = []
    decode = official.vae.decode

    def spy_decode(z, *a, **k):  # every phase ends with one decode of its final latents
        decoded.append(z * official.vae.config.scaling_factor)
        return decode(z, *a, **k)

    noise_iter, jitter_iter = iter(noises), iter(jitters)

    def randn_like(x, *a, **k):
        n = next(noise_iter)
        assert n.shape == x.shape, (n.shape, x.shape)
        return n.to(x.dtype)

    def randint(low, high):
        want_low, want_high, v = next(jitter_iter)
        assert (low, high) == (want_low, want_high), f"official asks for [{low}, {high}], anysize drew in [{want_low}, {want_high}]"
        return v

    saved_randn, saved_randint = torch.randn_like, module.random.randint
    torch.randn_like, module.random.randint = randn_like, randint
    official.vae.decode = spy_decode
    try:  # the official code prints its phases; scale_model_input warnings come from its per-view steps
        with contextlib.redirect_stdout(io.StringIO()), diffusers_quiet():
            official(PROMPT, height=height, width=width, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator().manual_seed(SEED), output_type="pt", view_batch_size=16, stride=8,
                     multi_decoder=False, cosine_scale_1=3.0, cosine_scale_2=1.0, cosine_scale_3=1.0, sigma=0.8)
    finally:
        torch.randn_like, module.random.randint = saved_randn, saved_randint
        del official.vae.decode
    assert next(jitter_iter, None) is None, "anysize drew more jitter than the official code asked for"
    return decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", help="a local copy of PRIS-CV/DemoFusion's pipeline_demofusion_sdxl.py")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    module = load_official(args.official)
    rows = []
    for kind, fix in (("euler", False), ("euler", True), ("ddim", False)):
        for h, w in SIZES:
            pipe, ours, noises, jitters = run_anysize(kind, h, w)
            theirs = run_official(module, pipe, kind, h, w, noises, jitters, fix)
            diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs)]
            label = kind + (", index fixed" if fix else "")
            rows.append({"scheduler": label, "size": f"{w}x{h}", "phases": len(ours), "max_abs_diff": diffs,
                         "latent_abs_max": float(ours[-1].abs().max()), "jitter_draws": len(jitters)})
            print(f"{label:20s} {w}x{h}: " + ", ".join(f"phase {k + 1} {d:.2e}" for k, d in enumerate(diffs)),
                  flush=True)
    if args.json:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        Path(args.json).write_text(json.dumps({"anysize": head.stdout.strip(), "steps": STEPS, "guidance": GUIDANCE,
                                               "seed": SEED, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

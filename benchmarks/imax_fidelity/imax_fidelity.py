"""anysize's `imax` against the official I-Max pipeline, stage by stage.

    python benchmarks/imax_fidelity/imax_fidelity.py --official /tmp/imax_official \
        [--json benchmarks/imax_fidelity/imax_fidelity.json] [--sizes 2048x2048,1536x1536,3072x1024]

``--official`` is a local copy of PRIS-CV/I-Max (its ``pipeline_flux_imax.py``,
``transformer_flux.py`` and ``attention_processor.py``; this repository holds none of its code);
running it needs ``PyWavelets`` (``pywt``) importable. Both run on the same tiny random-weight
FLUX.1-dev-like pipeline (anysize's builder: 1 double + 2 single blocks, 2 heads x 16, T5 length 512)
told that its native size is 1024 px, the official code's hard-coded native resolution, so
every official constant (1024 px, 64 x 64 = 4096 native tokens, 512 text tokens) is the tiny
model's too. The official transformer class is built with the tiny transformer's config and
loaded with its weights (strictly: the parameter names are the same).

Settings: the official defaults (NTK factor 10, time shifts 3 and 6, guidance 3.5 and 7,
proportional attention, text duplication, swin patchify, DWT level 1) with every guidance
schedule, 4 steps per stage (even, so the official run does not end on a padded step), seed 7.

Randomness pinned: the official code draws the two noises from the pipeline's generator and the
VAE posterior sample from the global RNG, anysize all three from the image's generator (in the
order noise 1, posterior, noise 2); here the official ``randn_tensor`` calls return the noises
anysize drew and the official posterior sample uses anysize's ε, after checking the shapes.

Shims, all inside this script:

* the official code assigns ``scheduler.config.shift`` before each stage, which the diffusers of
  its time read in ``set_timesteps``; today's diffusers read ``scheduler.shift`` (set once at
  construction), so the official scheduler here is a ``FlowMatchEulerDiscreteScheduler`` subclass
  whose ``set_timesteps`` first takes ``config.shift`` — the intended behaviour. Without it the
  official run keeps the scheduler's shift 3 in both stages (the ``as is`` row shows that);
* the official code decodes and encodes with diffusers' tiled VAE; its tiles are made larger than
  any image here, so it is the plain VAE, as anysize's at these sizes (anysize's own tiling is
  switched off too, it would start at 2048² px);
* ``use_dynamic_shifting`` is switched off on the official scheduler, as the official README does.

Printed: the max abs difference of the native-resolution stage's final latents, of the guidance
latents (the re-encoded upsample) and of the final latents.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anysize  # noqa: E402
from anysize.builders import tiny_pipeline  # noqa: E402
from anysize.methods import imax as imax_method  # noqa: E402
from anysize.models import adapt  # noqa: E402

PROMPT = "a red circle on a blue square"
STEPS = 4
SEED = 7
NATIVE_LATENT = 128  # 1024 px: the official pipeline's native_resolution
SCHEDULES = ("cosine_shift", "cosine_decay", "constant", "disable")
DEFAULT_SIZES = "2048x2048,1536x1536,3072x1024"
#: the commit of PRIS-CV/I-Max whose files were compared (the newest, 2024-10-16)
OFFICIAL_COMMIT = "3b38c1153086f404fbfdde2b2a200c3b67c4ed83"


def load_official(path: str):
    sys.path.insert(0, str(Path(path).resolve()))  # transformer_flux imports attention_processor by name
    return importlib.import_module("pipeline_flux_imax"), importlib.import_module("transformer_flux")


@contextlib.contextmanager
def diffusers_quiet():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


@contextlib.contextmanager
def posterior(record: list | None = None, replay: list | None = None):
    """The VAE posterior sample, its ε recorded (anysize's run) or replayed (the official run)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.utils.torch_utils import randn_tensor

    stock = DiagonalGaussianDistribution.sample
    pending = None if replay is None else iter(replay)

    def sample(self, generator=None):
        if pending is not None:
            eps = next(pending)
            assert eps.shape == self.mean.shape, (eps.shape, self.mean.shape)
        else:
            eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                               dtype=self.parameters.dtype)
            record.append(eps.clone())
        out = self.mean + self.std * eps
        if replay is not None and record is not None:
            record.append(out.clone())
        return out

    DiagonalGaussianDistribution.sample = sample
    try:
        yield
    finally:
        DiagonalGaussianDistribution.sample = stock


def run_anysize(pipe, height: int, width: int, schedule: str):
    """anysize's stage-1 latents, guidance latents and final latents, and the noises and ε it drew."""
    adapter = adapt(pipe, native_size=NATIVE_LATENT)
    noises, eps, stage_ends, guides = [], [], {}, []
    initial_noise, decode, encode = adapter.initial_noise, adapter.decode, adapter.encode

    def spy_noise(shape, generators):
        n = initial_noise(shape, generators)
        noises.append(n.clone())
        return n

    adapter.initial_noise = spy_noise
    adapter.decode = lambda z, **k: decode(z, **{**k, "tiled": False})
    adapter.encode = lambda x, **k: encode(x, **{**k, "tiled": False})
    guidance = imax_method.IMax.guidance

    def spy_guidance(self, request, z):
        g = guidance(self, request, z)
        guides.append(g.clone())
        return g

    def callback(info):
        stage_ends[info.stage] = info.latents.clone()

    imax_method.IMax.guidance = spy_guidance
    try:
        with posterior(record=eps):
            anysize.generate(adapter, PROMPT, height=height, width=width, steps=STEPS, seed=SEED, guidance=3.5,
                             method="imax", method_options={"guidance_schedule": schedule},
                             output_type="latent", progress=False, callback=callback)
    finally:
        imax_method.IMax.guidance = guidance
    return [stage_ends["native resolution"], guides[0], stage_ends["high resolution"]], noises, eps


def official_scheduler(base, follow_config: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    class ConfigShiftScheduler(FlowMatchEulerDiscreteScheduler):
        """set_timesteps reads config.shift, as the diffusers the official code was written for."""

        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
            self.set_shift(self.config.shift)
            return super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)

    cls = ConfigShiftScheduler if follow_config else FlowMatchEulerDiscreteScheduler
    scheduler = cls.from_config(base.config)
    scheduler.config.use_dynamic_shifting = False  # the official README's line
    return scheduler


def run_official(pipeline_module, transformer_module, pipe, height, width, schedule, noises, eps, follow_config=True):
    """The official pipeline's stage-1 latents, guidance latents and final latents, fed anysize's noise."""
    stock = pipe.transformer
    accepted = inspect.signature(transformer_module.FluxTransformer2DModel.__init__).parameters
    config = {k: v for k, v in stock.config.items() if k in accepted}
    official_net = transformer_module.FluxTransformer2DModel(**config)
    official_net.load_state_dict(stock.state_dict(), strict=True)
    official_net.eval()
    official = pipeline_module.FluxPipeline(
        scheduler=official_scheduler(pipe.scheduler, follow_config), vae=pipe.vae, text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
        transformer=official_net,
    )
    official.set_progress_bar_config(disable=True)
    vae = official.vae
    saved_tiles = vae.tile_sample_min_size, vae.tile_latent_min_size
    vae.tile_sample_min_size, vae.tile_latent_min_size = 1 << 20, 1 << 17  # one tile: the plain VAE

    pending = iter(noises)

    def randn_tensor(shape, generator=None, device=None, dtype=None, **_):
        n = next(pending)
        assert tuple(n.shape) == tuple(shape), (tuple(n.shape), tuple(shape))
        return n.to(device=device, dtype=dtype)

    steps = []

    def on_step(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    saved_randn = pipeline_module.randn_tensor
    pipeline_module.randn_tensor = randn_tensor
    samples = []
    try:
        with posterior(record=samples, replay=eps), diffusers_quiet():
            out = official(PROMPT, height=height, width=width, num_inference_steps1=STEPS, num_inference_steps2=STEPS,
                           guidance_scale1=3.5, guidance_scale2=7.0, ntk_factor=10.0, time_shift_1=3.0,
                           time_shift_2=6.0, proportional_attention=True, text_duplication=True, swin_pachify=True,
                           dwt_level=1, guidance_schedule=schedule, generator=torch.Generator().manual_seed(SEED),
                           output_type="latent", return_dict=True, max_sequence_length=512,
                           callback_on_step_end=on_step)
    finally:
        pipeline_module.randn_tensor = saved_randn
        vae.tile_sample_min_size, vae.tile_latent_min_size = saved_tiles
    assert next(pending, None) is None, "anysize drew more noise than the official code asked for"
    f = official.vae_scale_factor  # 16: the latent factor 8 times the 2x2 packing
    k = int((height * width / 1024**2) ** 0.5 + 0.5)
    stage1 = official._unpack_latents(steps[STEPS - 1], height // k, width // k, f)
    cfg = vae.config
    guide = (samples[0] - cfg.shift_factor) * cfg.scaling_factor
    final = official._unpack_latents(out.images, height, width, f)
    return [stage1, guide, final]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="a local copy of PRIS-CV/I-Max (the folder of its three files)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="WxH targets, comma-separated (default %(default)s)")
    ap.add_argument("--official-commit", default=OFFICIAL_COMMIT, help="the commit the copy is from (recorded)")
    ap.add_argument("--schedules", default=",".join(SCHEDULES), help="guidance schedules (default: all)")
    args = ap.parse_args()
    pipeline_module, transformer_module = load_official(args.official)
    pipe = tiny_pipeline("flux")
    rows = []
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    for w, h in sizes:
        for schedule in args.schedules.split(","):
            cases = [("official", True)] + ([("official as is", False)] if schedule == "cosine_shift" else [])
            for label, follow in cases:
                start = time.perf_counter()
                ours, noises, eps = run_anysize(pipe, h, w, schedule)
                theirs = run_official(pipeline_module, transformer_module, pipe, h, w, schedule, noises, eps, follow)
                diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs)]
                row = {"size": f"{w}x{h}", "schedule": schedule, "official": label, "stage1": diffs[0],
                       "guidance": diffs[1], "final": diffs[2], "final_abs_max": float(ours[2].abs().max()),
                       "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(f"{w}x{h} {schedule:13s} {label:15s} stage 1 {diffs[0]:.2e}  guidance {diffs[1]:.2e}  "
                      f"final {diffs[2]:.2e}  (|final| ≤ {row['final_abs_max']:.2f}, {row['seconds']} s)", flush=True)
    if args.json:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        Path(args.json).write_text(json.dumps({
            "anysize": head.stdout.strip(), "official_commit": args.official_commit, "steps": STEPS,
            "seed": SEED, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

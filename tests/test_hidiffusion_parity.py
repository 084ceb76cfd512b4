"""Our HiDiffusion matches the official PyPI package ``hidiffusion`` 0.1.10 numerically.

Same tiny SD 1.5-, SD 2.1- and SDXL-layout pipelines (same weights), seed and scheduler on both
sides; the package recognises them by the official checkpoint names. Both implementations draw
their window shifts from the global torch RNG in the same order (ours with
``shift_source="global"``), seeded identically before each call, so they see the same shift
sequence. Skipped when the package is not installed: ``pip install --no-deps hidiffusion==0.1.10``
(it declares no dependencies), or point ``ANYSIZE_HIDIFFUSION_PATH`` at a ``pip install --target``
folder. See tests/hidiffusion_official.py for the stand-in that lets it import on diffusers >= 0.41.
"""

import warnings

import pytest
import torch

import anysize
from anysize.models import adapt
from anysize.patches.hidiffusion import HiDiffusionPatch
from anysize.builders import tiny_pipeline

from hidiffusion_official import OFFICIAL_NAMES, load_official

hidiffusion = load_official()
pytestmark = pytest.mark.skipif(hidiffusion is None, reason="the official hidiffusion package is not installed")

TOL = 1e-4
RNG_SEED = 1234
PROMPT = "a red square on a blue background"


def official_pipeline(family, cls=None):
    pipe = tiny_pipeline(family)
    if cls is not None:
        pipe = cls(**pipe.components)
    pipe.register_to_config(_name_or_path=OFFICIAL_NAMES[family])  # how the package recognises the model
    hidiffusion.apply_hidiffusion(pipe)
    return pipe


def call(pipe, h, w, steps, **kw):
    torch.manual_seed(RNG_SEED)  # the shift sequence (global RNG); the noise comes from the generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns at odd feature sizes
        return pipe(PROMPT, height=h, width=w, num_inference_steps=steps, guidance_scale=adapt(pipe).default_guidance,
                    generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images


def _package_roll_rule(window_plan):
    def plan(self, tokens, batch=1):
        out = window_plan(self, tokens, batch)
        if out is not None and out[2][0] == 0:
            out = (out[0], out[1], (0, 0))
        return out

    return plan


CASES = [
    # (height, width, steps, apply_at_native): 2x native; odd latent 33x25 (window resize
    # fallback); the native size (the package changes it too); a 1:3 ratio
    (256, 256, 10, False),
    (264, 200, 6, False),
    (128, 128, 5, True),
    (128, 384, 6, False),
]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("h, w, steps, at_native", CASES)
def test_method_and_patch_match_the_official_package(family, h, w, steps, at_native, monkeypatch):
    ref = call(official_pipeline(family), h, w, steps)
    if family == "sdxl" and w == 3 * h:
        # SDXL 1:3 pools windows to 2 rows, whose row shift is 0: the package then skips the column
        # shift too (a deliberate difference, see anysize.patches.hidiffusion); emulate that here
        monkeypatch.setattr(HiDiffusionPatch, "_window_plan", _package_roll_rule(HiDiffusionPatch._window_plan))

    ours_pipe = tiny_pipeline(family)
    torch.manual_seed(RNG_SEED)
    method = anysize.generate(
        adapt(ours_pipe), PROMPT, height=h, width=w, steps=steps, seed=0, method="hidiffusion",
        method_options={"shift_source": "global", "apply_at_native": at_native}, output_type="latent", progress=False,
    ).latents
    with anysize.patch(ours_pipe, "hidiffusion", shift_source="global", apply_at_native=at_native):
        patched = call(ours_pipe, h, w, steps)
    plain = call(ours_pipe, h, w, steps)

    assert (method - ref).abs().max().item() <= TOL
    assert (patched - ref).abs().max().item() <= TOL
    assert (plain - ref).abs().max().item() > 100 * TOL  # the comparison is not vacuous


def test_img2img_partial_schedule_matches_the_official_package():
    """img2img with strength 0.6: both count the RAU-Net phase over the executed steps."""
    from diffusers import StableDiffusionImg2ImgPipeline

    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kw = dict(image=image, strength=0.6)
    official = official_pipeline("sd1", StableDiffusionImg2ImgPipeline)
    ref = _img2img(official, kw)
    ours = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd1").components)
    with anysize.patch(ours, "hidiffusion", shift_source="global") as p:
        got = _img2img(ours, kw)
    n = len(p.log)  # executed steps (PNDM: 7 of 11)
    assert 3 < n < 10 and [e[:2] for e in p.log] == [(i, n) for i in range(n)]
    assert (got - ref).abs().max().item() <= TOL
    assert (_img2img(ours, kw) - ref).abs().max().item() > 100 * TOL


def _img2img(pipe, kw):
    torch.manual_seed(RNG_SEED)
    return pipe(PROMPT, num_inference_steps=10, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                output_type="latent", **kw).images

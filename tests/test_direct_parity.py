"""`direct` at the native size reproduces the stock diffusers pipeline: proof the adapters are right."""

import numpy as np
import pytest
import torch

import anysize
from anysize.models import adapt
from anysize.errors import InvalidArgumentError

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]
SIZE = {"sd1": 128, "sd2": 128, "sdxl": 128, "sd3": 128, "flux": 128}


def stock(pipe, prompt, h, w, steps, guidance, seed, negative=None):
    kw = dict(height=h, width=w, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
              generator=torch.Generator().manual_seed(seed))
    if negative is not None:
        kw["negative_prompt"] = negative
    return pipe(prompt, **kw).images[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_equals_stock_pipeline_at_native_size(tiny, family):
    pipe = tiny(family)
    adapter = adapt(pipe, native_size=SIZE[family] // 8)
    h = w = SIZE[family]
    ours = anysize.generate(adapter, "a red triangle on a blue background", steps=3, seed=7,
                            output_type="np", progress=False)
    ref = stock(pipe, "a red triangle on a blue background", h, w, 3, adapter.default_guidance, 7)
    assert ours.images[0].shape == ref.shape == (h, w, 3)
    assert np.abs(ours.images[0] - ref).max() <= 1e-5


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_direct_equals_stock_with_negative_prompt_and_non_square(tiny, family):
    pipe = tiny(family)
    adapter = adapt(pipe)
    ours = anysize.generate(adapter, "a cat", negative_prompt="blurry", width=256, height=128, steps=2,
                            guidance=6.0, seed=3, output_type="np", progress=False)
    ref = stock(pipe, "a cat", 128, 256, 2, 6.0, 3, negative="blurry")
    assert np.abs(ours.images[0] - ref).max() <= 1e-5


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++2m", "euler_a"])
def test_direct_equals_stock_for_each_scheduler(tiny, scheduler):
    from anysize.schedulers import make_scheduler

    pipe = tiny("sd1")
    adapter = adapt(pipe)
    ours = anysize.generate(adapter, "a cat", steps=3, seed=1, scheduler=scheduler, output_type="np", progress=False)
    original = pipe.scheduler
    try:
        pipe.scheduler = make_scheduler(adapter, scheduler)
        ref = stock(pipe, "a cat", 128, 128, 3, 7.5, 1)
    finally:
        pipe.scheduler = original
    assert np.abs(ours.images[0] - ref).max() <= 1e-5


def test_flux_schnell_like_without_guidance_embeds(tiny):
    pipe = tiny("flux", guidance_embeds=False)
    adapter = adapt(pipe)
    ours = anysize.generate(adapter, "a cat", width=128, height=128, steps=2, seed=0, output_type="np", progress=False)
    ref = stock(pipe, "a cat", 128, 128, 2, 3.5, 0)
    assert np.abs(ours.images[0] - ref).max() <= 1e-5


def test_batch_of_prompts_matches_single_generation(tiny):
    adapter = adapt(tiny("sd1"))
    both = anysize.generate(adapter, ["a cat", "a dog"], steps=2, seed=5, output_type="np", progress=False)
    dog = anysize.generate(adapter, "a dog", steps=2, seed=6, output_type="np", progress=False)
    assert both.config["seeds"] == [5, 6]
    assert np.abs(both.images[1] - dog.images[0]).max() <= 1e-5


def test_a_scheduler_without_the_size_dependent_shift_is_refused_for_flux(tiny):
    """FLUX shifts its schedule by the image size (mu); flow_heun takes no mu, so it would run another
    schedule than the model's (and used to fail deep inside diffusers with a TypeError)."""
    adapter = adapt(tiny("flux"))
    assert adapter.scheduler.config.get("use_dynamic_shifting")
    with pytest.raises(InvalidArgumentError, match="'flow_heun' cannot follow .* choose one of: flow_euler$"):
        anysize.generate(adapter, "a cat", steps=2, scheduler="flow_heun", progress=False)
    # SD3 has a static shift: flow_heun runs
    sd3 = adapt(tiny("sd3"))
    assert len(anysize.generate(sd3, "a cat", steps=1, scheduler="flow_heun", output_type="np", progress=False)) == 1

"""The shared img2img (SDEdit) path: `partial_schedule` + `Method.refine`, checked against diffusers."""

import numpy as np
import pytest
import torch

import anysize
from anysize.request import Request
from anysize.errors import InvalidArgumentError
from anysize.methods import create
from anysize.models import adapt
from anysize.sampling import make_generators, partial_schedule
from anysize.schedulers import make_scheduler


def job_for(adapter, prompt, h, w, steps, seed, scheduler=None, guidance=None):
    guidance = adapter.default_guidance if guidance is None else guidance
    cond = adapter.encode_prompt([prompt], None, guidance_scale=guidance)
    gens = make_generators(seed, 1)
    return Request(adapter, [prompt], None, h, w, steps, guidance, [seed], scheduler, cond, gens, progress=False)


@pytest.mark.parametrize("steps,strength", [(10, 0.3), (10, 0.75), (7, 1.0), (4, 0.5)])
@pytest.mark.parametrize("scheduler", [None, "dpm++2m", "euler"])
def test_partial_schedule_is_the_diffusers_img2img_tail(tiny, steps, strength, scheduler):
    import diffusers

    pipe = tiny("sd1")
    adapter = adapt(pipe)
    s = make_scheduler(adapter, scheduler)
    timesteps, begin = partial_schedule(adapter, s, steps, strength, (16, 16))
    ref_pipe = diffusers.StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": make_scheduler(adapter, scheduler)})
    ref_pipe.scheduler.set_timesteps(steps)
    ref, ref_steps = ref_pipe.get_timesteps(steps, strength, "cpu")
    assert torch.equal(timesteps, ref)
    if hasattr(ref_pipe.scheduler, "set_begin_index"):
        assert ref_pipe.scheduler.begin_index == begin
    assert begin == len(s.timesteps) - len(timesteps)
    assert 0 < len(timesteps) < len(s.timesteps) or strength == 1.0


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, True, "0.5"])
def test_partial_schedule_rejects_strength_outside_0_1(tiny, strength):
    adapter = adapt(tiny("sd1"))
    with pytest.raises(InvalidArgumentError, match="strength"):
        partial_schedule(adapter, make_scheduler(adapter), 10, strength, (16, 16))


def test_partial_schedule_refuses_a_strength_that_runs_no_step(tiny):
    adapter = adapt(tiny("sd1"))
    with pytest.raises(InvalidArgumentError, match="no step"):
        partial_schedule(adapter, make_scheduler(adapter), 10, 0.05, (16, 16))


@pytest.mark.parametrize("family,pipeline_name,scheduler", [
    ("sd1", "StableDiffusionImg2ImgPipeline", None),
    ("sd1", "StableDiffusionImg2ImgPipeline", "dpm++2m"),  # multistep: begin_index must be right
    ("sd1", "StableDiffusionImg2ImgPipeline", "euler"),    # VE state space
    ("sdxl", "StableDiffusionXLImg2ImgPipeline", None),
    ("sd3", "StableDiffusion3Img2ImgPipeline", None),      # flow, the DiT pipelines' rounding
])
def test_direct_refine_equals_the_diffusers_img2img_pipeline(tiny, family, pipeline_name, scheduler):
    import diffusers

    pipe = tiny(family)
    adapter = adapt(pipe)
    h = w = 128
    clean = torch.randn(1, adapter.latent_channels, h // 8, w // 8, generator=torch.Generator().manual_seed(5))
    job = job_for(adapter, "a red square", h, w, 6, seed=11, scheduler=scheduler)
    ours = create("direct").refine(job, clean, 0.6)

    ref_pipe = getattr(diffusers, pipeline_name)(**pipe.components)
    ref_pipe.scheduler = make_scheduler(adapter, scheduler)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe("a red square", image=clean, strength=0.6, num_inference_steps=6,
                   guidance_scale=job.guidance, generator=torch.Generator().manual_seed(11),
                   output_type="latent").images
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4  # float32 rounding of the re-noising coefficients


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_refine_is_deterministic_and_depends_on_strength(tiny, family):
    adapter = adapt(tiny(family))
    clean = torch.randn(1, adapter.latent_channels, 16, 24, generator=torch.Generator().manual_seed(0))
    runs = [create("direct").refine(job_for(adapter, "a cat", 128, 192, 4, seed=3), clean, s) for s in (0.5, 0.5, 1.0)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    assert runs[0].shape == clean.shape


def test_hidiffusion_refine_runs_inside_its_patch(tiny):
    """A partial schedule at twice the native size: the patch opens for the loop and closes after."""
    adapter = adapt(tiny("sd1"))
    clean = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    hid = create("hidiffusion")
    patched = hid.refine(job_for(adapter, "a cat", 256, 256, 4, seed=3), clean, 0.5)
    plain = create("direct").refine(job_for(adapter, "a cat", 256, 256, 4, seed=3), clean, 0.5)
    assert not torch.allclose(patched, plain)  # the patch changed the network during the loop
    again = create("direct").refine(job_for(adapter, "a cat", 256, 256, 4, seed=3), clean, 0.5)
    assert torch.equal(plain, again)  # and was removed after it
    assert not hasattr(adapter.network, "_anysize_patch")


def test_generate_still_equals_refine_free_run(tiny):
    """`run` goes through `denoise` too: the full schedule from noise is unchanged."""
    adapter = adapt(tiny("sd1"))
    a = anysize.generate(adapter, "a cat", steps=3, seed=2, output_type="np", progress=False).images[0]
    b = anysize.generate(adapter, "a cat", steps=3, seed=2, output_type="np", progress=False).images[0]
    assert np.array_equal(a, b)

"""ScaleDiff: LFM, Structure Guidance, the cascade's stages and defaults, reduction to plain
generation, determinism, every family to a 4x target, and bad options."""

import numpy as np
import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.methods import create
from anysize.methods.scalediff import (
    FAMILY_DEFAULTS, ScaleDiff, frequency_mix, lowpass, restart_index, sg_weight, stage_schedule, structure_guidance,
)
from anysize.models import adapt
from anysize.sampling import partial_schedule
from anysize.schedulers import make_scheduler

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]


def gen(adapter, size=(256, 256), steps=5, seed=0, method="scalediff", prompt="a red square", **options):
    h, w = size
    return anysize.generate(adapter, prompt, height=h, width=w, steps=steps, seed=seed, method=method,
                            method_options=options or None, output_type="latent", progress=False)


def model(tiny, family):
    return adapt(tiny(family), native_size=16)  # every tiny family "native" at 128 px


# ------------------------------------------------------------------------------ LFM and SG operators


def test_lfm_with_identical_inputs_returns_the_input_exactly():
    z = torch.randn(2, 4, 24, 40, generator=torch.Generator().manual_seed(0))
    for cutoff in (0.125, 0.25, 0.5):
        assert torch.equal(frequency_mix(z, z, cutoff), z)


def test_lfm_takes_the_low_band_from_the_latent_upsample_and_the_high_band_from_the_pixel_one():
    g = torch.Generator().manual_seed(1)
    latent_up = torch.randn(1, 4, 32, 32, generator=g)
    # the pixel upsample differs by a constant (pure low band): the result is the latent upsample
    assert torch.allclose(frequency_mix(latent_up, latent_up + 0.7, 0.25), latent_up, atol=1e-5)
    # ... and by a Nyquist checkerboard (pure high band): the result keeps it
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0
    mixed = frequency_mix(latent_up, latent_up + checker, 0.25)
    # (the antialiased down-sampling leaves a trace of the checkerboard, largest at the borders)
    assert torch.allclose(mixed, latent_up + checker, atol=0.01)


def test_lowpass_keeps_constants_and_removes_the_finest_detail():
    x = torch.full((1, 2, 16, 24), 3.0)
    assert torch.allclose(lowpass(x, 0.125), x)
    checker = ((torch.arange(16)[:, None] + torch.arange(24)[None, :]) % 2).float()[None, None]
    assert lowpass(checker - 0.5, 0.25).abs().max() < 0.005  # of an amplitude of 0.5


def test_structure_guidance_with_weight_zero_is_a_no_op_and_one_replaces_the_low_band():
    g = torch.Generator().manual_seed(2)
    x0, ref = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    assert structure_guidance(x0, lowpass(ref, 0.25), 0.0, 0.25) is x0
    guided = structure_guidance(x0, lowpass(ref, 0.25), 1.0, 0.25)
    assert torch.allclose(guided - x0, lowpass(ref, 0.25) - lowpass(x0, 0.25), atol=1e-6)
    # the low band of the guided estimate moved toward the reference's
    d0 = (lowpass(x0, 0.25) - lowpass(ref, 0.25)).abs().mean()
    assert (lowpass(guided, 0.25) - lowpass(ref, 0.25)).abs().mean() < 0.5 * d0


@pytest.mark.parametrize("family,scheduler", [
    ("sd1", None), ("sd2", None), ("sdxl", None), ("sd1", "dpm++2m"), ("sdxl", "euler"), ("flux", None), ("sd3", None),
])
def test_guidance_round_trip_keeps_the_model_output_when_the_estimate_is_unchanged(tiny, family, scheduler):
    """SG converts x0 -> the model's own output (eps, v, flow) through the scheduler's tables: an
    unchanged x0 gives back the output the network made."""
    from anysize.sampling import StepContext

    adapter = model(tiny, family)
    s = make_scheduler(adapter, scheduler)
    timesteps, _ = partial_schedule(adapter, s, 10, 0.5, (16, 16))
    cond = adapter.encode_prompt(["a cat"], None, guidance_scale=adapter.default_guidance)
    m = create("scalediff")
    g = torch.Generator().manual_seed(3)
    for i in (0, len(timesteps) - 1):
        ctx = StepContext(adapter, s, cond, timesteps, i, None)
        x = torch.randn(1, adapter.latent_channels, 16, 16, generator=g) * 3
        out = torch.randn(1, adapter.latent_channels, 16, 16, generator=g)
        x0 = ctx.noise_space.to_x0(x, out, ctx.t, adapter.prediction_type)
        back = m.guide(ctx, x, out, 1.0, lowpass(x0, 0.25), 0.25)  # the pull is exactly zero
        assert torch.allclose(back, out, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ weights and defaults


def _stage_weights(adapter, steps, restart, schedule):
    s = make_scheduler(adapter)
    timesteps, _ = stage_schedule(adapter, s, steps, restart)
    ns = adapter.noise_space(s)
    tau = ns.coefficients(timesteps[0])
    return [sg_weight(schedule, ns.coefficients(t), tau) for t in timesteps]


def test_sdxl_default_schedule_is_the_official_one(tiny):
    """50 Euler steps, restart 0.4: 20 steps from t=381 with γ = (1-ᾱ_t)/(1-ᾱ_381) (spec §5)."""
    adapter = adapt(tiny("sdxl"))
    restart, cutoff, schedule, shift = FAMILY_DEFAULTS["sdxl"]
    assert (restart, cutoff, schedule, shift) == (0.4, 0.125, "alpha", False)
    s = make_scheduler(adapter)
    timesteps, begin = stage_schedule(adapter, s, 50, restart)
    assert (begin, len(timesteps), int(timesteps[0])) == (30, 20, 381)
    spec = [1.00, .94, .88, .82, .76, .69, .63, .57, .51, .46, .40, .35, .29, .24, .20, .15, .11, .07, .04, .003]
    ours = _stage_weights(adapter, 50, restart, schedule)
    assert ours == pytest.approx(spec, abs=0.006)


def test_flux_default_schedule_is_the_official_one(tiny):
    """30 steps, restart 0.6, the shift pinned at 4096 tokens: σ_τ = 0.826 and γ_t = σ_t (spec §5)."""
    adapter = adapt(tiny("flux"))  # FLUX's 1024 px native size: 64x64 = 4096 tokens
    restart, cutoff, schedule, shift = FAMILY_DEFAULTS["flux"]
    assert (restart, cutoff, schedule, shift) == (0.6, 0.25, "sigma", True)
    spec = [.826, .805, .783, .760, .734, .707, .678, .646, .612, .575, .535, .490, .441, .387, .327, .260, .184, .098]
    assert _stage_weights(adapter, 30, restart, schedule) == pytest.approx(spec, abs=0.0015)


# (steps, restart, steps re-run by the official int(N·(1 - r))) incl. the cases where 1 - r
# is not exact in binary and the diffusers img2img rules are one step off
OFFICIAL_TAILS = [(50, 0.4, 20), (30, 0.6, 18), (3, 0.4, 2), (7, 0.4, 3), (10, 0.8, 9), (30, 0.8, 25),
                  (50, 0.9, 46), (60, 0.55, 34), (5, 0.4, 2), (5, 0.6, 3), (10, 0.05, 1)]


@pytest.mark.parametrize("family", ["sdxl", "sd2", "sd3", "flux"])
def test_the_restart_index_is_the_officials(tiny, family):
    """Every family restarts at the official int(N·(1 - restart)), float rounding included; the
    diffusers img2img rules (partial_schedule) differ by one step on some of these."""
    adapter = model(tiny, family)
    differs = 0
    for steps, restart, tail in OFFICIAL_TAILS:
        assert restart_index(steps, restart) == int(steps * (1 - restart)) == steps - tail
        s = make_scheduler(adapter)
        timesteps, begin = stage_schedule(adapter, s, steps, restart)
        assert (len(timesteps), begin) == (tail, steps - tail), (steps, restart)
        assert torch.equal(timesteps, s.timesteps[steps - tail:])
        if restart * steps >= 1:
            differs += len(partial_schedule(adapter, make_scheduler(adapter), steps, restart, (16, 16))[0]) != tail
    assert differs >= 3  # what the shared img2img rule would have run instead


def test_the_docstring_states_the_restart_rule_the_code_runs():
    import re

    import anysize.methods.scalediff as module

    doc = " ".join(module.__doc__.split())
    assert "int(N·(1 − restart))" in doc
    claims = re.findall(r"(\d+(?:\.\d+)?) of (\d+)(?: steps)? re-runs (\d+)", doc)
    assert len(claims) >= 8
    for restart, steps, runs in claims:
        assert int(steps) - restart_index(int(steps), float(restart)) == int(runs), (restart, steps, runs)


def test_alpha_schedule_on_a_vp_scheduler_is_the_alphas_cumprod_ratio(tiny):
    adapter = model(tiny, "sd2")  # DDIM, v-prediction
    s = make_scheduler(adapter)
    timesteps, _ = stage_schedule(adapter, s, 20, 0.4)
    ac = s.alphas_cumprod.double()
    expect = [float((1 - ac[int(t)]) / (1 - ac[int(timesteps[0])])) for t in timesteps]
    assert _stage_weights(adapter, 20, 0.4, "alpha") == pytest.approx(expect, rel=1e-5)


def test_the_flow_shift_is_the_native_sizes_in_the_base_pass_and_every_stage(tiny, monkeypatch):
    """The official code pins the flow shift's image length (4096 tokens) in the base pass and the
    stages for any base size; anysize pins the native token count (= 4096 for FLUX.1): a 2:1 target
    has a base of half the native tokens and still gets the native shift, and so do its stages (the
    first SG weight γ = σ_τ is the native schedule's σ at the restart index)."""
    from anysize.models.dit import _flow_shift_mu

    adapter = model(tiny, "flux")  # native 16x16 latent = 8x8 tokens
    assert create("scalediff").stage_sizes(adapter, 32, 64) == [(8, 16), (16, 32), (32, 64)]
    seen, timesteps = [], []
    set_timesteps, denoise = adapter.set_timesteps, ScaleDiff.denoise

    def spy_set(scheduler, steps, latent_hw):
        seen.append(tuple(latent_hw))
        return set_timesteps(scheduler, steps, latent_hw)

    def spy_denoise(self, request, latents, scheduler, ts, **kw):
        timesteps.append(ts.clone())
        return denoise(self, request, latents, scheduler, ts, **kw)

    with monkeypatch.context() as m:
        m.setattr(adapter, "set_timesteps", spy_set)
        m.setattr(ScaleDiff, "denoise", spy_denoise)
        weights = _run_weights(adapter, (256, 512), steps=10, query_shift=False, with_stages=True)
    assert seen and set(seen) == {(16, 16)}  # the base pass, the early restart check and both stages
    native = make_scheduler(adapter)
    full = adapter.set_timesteps(native, 10, (16, 16))
    own = adapter.set_timesteps(make_scheduler(adapter), 10, (8, 16))
    assert torch.equal(timesteps[0], full) and not torch.equal(own, full)  # the base's own shift would differ
    begin = restart_index(10, 0.6)
    assert all(torch.equal(t, full[begin:]) for t in timesteps[1:]) and len(timesteps) == 3
    assert weights[-1][0] == pytest.approx(float(native.sigmas[begin]), abs=1e-6)
    # FLUX.1's native 1024² canvas is the official 4096 tokens
    flux = adapt(tiny("flux"))
    s1, s2 = make_scheduler(flux), make_scheduler(flux)
    assert tuple(flux.native_latent_size) == (128, 128)
    stage_schedule(flux, s1, 30, 0.6)
    s2.set_timesteps(sigmas=np.linspace(1.0, 1 / 30, 30), mu=_flow_shift_mu(s2, 4096, 1.15))
    assert torch.equal(s1.sigmas, s2.sigmas) and float(s1.sigmas[12]) == pytest.approx(0.826, abs=1e-3)


def _run_weights(adapter, size, with_stages=False, **options):
    from anysize.request import Request
    from anysize.sampling import make_generators

    steps = options.pop("steps", 5)
    m = create("scalediff", **options)
    cond = adapter.encode_prompt(["a cat"], None, guidance_scale=adapter.default_guidance)
    job = Request(adapter, ["a cat"], None, size[0], size[1], steps, adapter.default_guidance, [0], None, cond,
              make_generators(0, 1), progress=False)
    _, stages = m.cascade(job)
    return [s.weights for s in stages] if with_stages else stages[-1].weights


# ------------------------------------------------------------------------------ the cascade


@pytest.mark.parametrize("family", FAMILIES)
def test_at_or_below_the_native_size_it_is_plain_generation(tiny, family):
    adapter = model(tiny, family)
    for size in [(128, 128), (96, 128)] if family in ("sd1", "sdxl") else [(128, 128)]:
        a, b = gen(adapter, size), gen(adapter, size, method="direct")
        assert torch.equal(a.latents, b.latents)
        assert a.network_calls == b.network_calls


@pytest.mark.parametrize("target,sizes", [
    ((32, 32), [(16, 16), (32, 32)]),
    ((64, 64), [(16, 16), (32, 32), (64, 64)]),
    ((48, 48), [(16, 16), (32, 32), (48, 48)]),            # 3x: x2, then x1.5 to the exact size
    ((40, 40), [(16, 16), (40, 40)]),                      # 2.5x: one stage
    ((25, 56), [(7, 16), (14, 32), (25, 56)]),             # wide, not a multiple of anything
    ((16, 80), [(3, 16), (6, 32), (16, 80)]),              # 5x wide: round(log2 5) = 2 stages
])
def test_stage_sizes_double_until_the_exact_target(tiny, target, sizes):
    adapter = model(tiny, "sd1")
    assert create("scalediff").stage_sizes(adapter, *target) == sizes


def test_stage_sizes_stay_on_the_dit_token_grid(tiny):
    adapter = model(tiny, "flux")
    sizes = create("scalediff").stage_sizes(adapter, 24, 56)
    assert sizes[-1] == (24, 56) and all(h % 2 == 0 and w % 2 == 0 for h, w in sizes)
    assert create("scalediff", stages=1).stage_sizes(adapter, 64, 64) == [(16, 16), (64, 64)]


def _count_calls(adapter, fn):
    sizes = []
    original = adapter._forward

    def spy(x, t, embeds, window):
        sizes.append(tuple(x.shape[-2:]))
        return original(x, t, embeds, window)

    adapter._forward = spy
    try:
        fn()
    finally:
        del adapter._forward
    return sizes


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_every_dit_and_sdxl_runs_to_a_4x_target(tiny, family):
    adapter = model(tiny, family)
    calls = []
    result = None

    def run():
        nonlocal result
        result = gen(adapter, (512, 512), steps=5)
    calls = _count_calls(adapter, run)
    assert result.latents.shape[-2:] == (64, 64)
    assert torch.isfinite(result.latents).all()
    # 5 base steps, then the restart tail (SDXL 0.4 of 5 -> 2 steps; SD3/FLUX 0.6 -> 3) per stage
    tail = 2 if family == "sdxl" else 3
    assert calls == [(16, 16)] * 5 + [(32, 32)] * tail + [(64, 64)] * tail


def test_sd1_runs_to_a_4x_non_square_target_of_odd_latent_size(tiny):
    adapter = model(tiny, "sd1")
    out = gen(adapter, (200, 448), steps=4).latents
    assert out.shape[-2:] == (25, 56) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_determinism_and_the_global_rng_is_untouched(tiny, family):
    adapter = model(tiny, family)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = gen(adapter, (256, 256), seed=7).latents
    assert torch.equal(torch.get_rng_state(), state)
    b = gen(adapter, (256, 256), seed=7).latents
    c = gen(adapter, (256, 256), seed=8).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sg_weight_zero_is_plain_sdedit_with_npa(tiny, monkeypatch):
    adapter = model(tiny, "sd1")
    from anysize.methods.scalediff import ScaleDiff

    def never(*a, **k):
        raise AssertionError("guide called with weight 0")

    plain = gen(adapter, sg_scale=0.0).latents
    monkeypatch.setattr(ScaleDiff, "guide", never)
    assert torch.equal(gen(adapter, sg_scale=0.0).latents, plain)
    monkeypatch.undo()
    assert not torch.allclose(gen(adapter).latents, plain)


@pytest.mark.parametrize("option", [{"lfm": False}, {"npa": False}, {"sg_scale": 0.5}, {"cutoff": 0.5},
                                    {"restart": 0.8}, {"vae_sample": False}])
def test_each_part_changes_the_result(tiny, option):
    adapter = model(tiny, "sd1")
    assert not torch.allclose(gen(adapter).latents, gen(adapter, **option).latents)


def test_npa_runs_in_the_stages_only_and_is_removed_after(tiny):
    adapter = model(tiny, "sd1")
    unet = adapter.network
    procs = {k: id(v) for k, v in unet.attn_processors.items()}
    seen = []
    original = adapter._forward

    def spy(x, t, embeds, window):
        seen.append((tuple(x.shape[-2:]), type(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor).__name__))
        return original(x, t, embeds, window)

    adapter._forward = spy
    try:
        gen(adapter, (256, 256), steps=5)
    finally:
        del adapter._forward
    assert {s for s in seen if s[0] == (16, 16)} == {((16, 16), "AttnProcessor2_0")}
    assert {s for s in seen if s[0] == (32, 32)} == {((32, 32), "_SelfProcessor")}
    assert {k: id(v) for k, v in unet.attn_processors.items()} == procs


def test_sdxl_stage_conditioning_is_the_stage_canvas(tiny):
    """Deliberate difference: SDXL's size ids at a stage are the stage's own canvas."""
    adapter = model(tiny, "sdxl")
    ids = []
    original = adapter.time_ids

    def spy(window, n, dtype, device=None):
        out = original(window, n, dtype, device)
        ids.append(tuple(int(v) for v in out[0]))
        return out

    adapter.time_ids = spy
    try:
        gen(adapter, (256, 384), steps=5)
    finally:
        del adapter.time_ids
    assert ids[0] == (88, 128, 0, 0, 88, 128)  # 3x: the base is native on the limiting (long) side
    assert ids[-1] == (256, 384, 0, 0, 256, 384)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("options,match", [
    ({"restart": 0}, "restart must be in \\(0, 1\\]"),
    ({"restart": 1.5}, "restart"),
    ({"restart": "0.4"}, "restart"),
    ({"cutoff": 1.0}, "cutoff must be in \\(0, 1\\)"),
    ({"cutoff": 0}, "cutoff"),
    ({"sg_scale": -1}, "sg_scale must be a number in \\[0, 10\\]"),
    ({"sg_schedule": "cosine"}, "sg_schedule .cosine.; valid choices: alpha, sigma"),
    ({"lfm": "yes"}, "lfm must be true or false"),
    ({"query_shift": 1}, "query_shift"),
    ({"stages": 0}, "stages must be an integer >= 1"),
    ({"npa_chunk": 0}, "npa_chunk"),
    ({"tile": 64}, "no option tile"),
])
def test_bad_options_are_refused_with_the_valid_range(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        create("scalediff", **options)


def test_a_restart_that_runs_no_step_is_refused_before_any_work(tiny):
    adapter = model(tiny, "sd1")
    calls = adapter.calls
    # int(10·(1 - 1e-17)) = 10 in floating point: no step left (0.05 of 10 still re-runs one, officially too)
    with pytest.raises(InvalidArgumentError, match="restart 1e-17 of 10 steps re-runs no step.*larger restart"):
        gen(adapter, steps=10, restart=1e-17)
    assert adapter.calls == calls


def test_sd3_beyond_its_position_table_runs_with_the_extended_table_and_restores_it(tiny):
    adapter = model(tiny, "sd3")  # the tiny SD3 table covers 48 patches = 768 px per side
    pe = adapter.network.pos_embed
    table, m = pe.pos_embed, pe.pos_embed_max_size
    out = gen(adapter, (1024, 256), steps=3).latents
    assert out.shape[-2:] == (128, 32) and torch.isfinite(out).all()
    assert pe.pos_embed is table and pe.pos_embed_max_size == m
    with pytest.raises(InvalidArgumentError, match="768 px per side, or npa=true"):
        gen(adapter, (1024, 256), npa=False)


def test_sd3_with_a_table_that_is_not_sin_cos_is_refused_beyond_it(tiny):
    from anysize.builders import tiny_pipeline

    adapter = adapt(tiny_pipeline("sd3"), native_size=16)  # a private copy: its table is changed
    pe = adapter.network.pos_embed
    pe.pos_embed = pe.pos_embed + 0.01  # a learned-looking table
    with pytest.raises(InvalidArgumentError, match="not the sin-cos formula"):
        gen(adapter, (1024, 256))


def test_every_loop_is_named_for_the_callback_and_the_bar(tiny):
    # the base pass is a stage of its own, so a callback or a progress bar can tell it from stage 1
    adapter = adapt(tiny("sd1"), native_size=16)
    stages = []
    anysize.generate(adapter, "a red square", height=256, width=256, steps=3, method="scalediff", output_type="latent",
                     progress=False, callback=lambda info: stages.append(info.stage))
    assert stages[0] == "base" and stages[-1] == "stage 1/1" and set(stages) == {"base", "stage 1/1"}


def test_more_stages_than_the_size_has_room_for_are_refused_before_any_work(tiny):
    adapter = model(tiny, "sd1")
    calls = adapter.calls
    with pytest.raises(InvalidArgumentError, match=r"^scalediff stages=3: a 512x512 image has room for 2 upscaling stages "
                                                   r"of x2 above its native-size base; use stages <= 2"):
        gen(adapter, size=(512, 512), steps=2, stages=3)
    assert adapter.calls == calls
    assert gen(adapter, size=(512, 512), steps=2, stages=2).config["method_options"]["stages"] == 2
    assert gen(adapter, size=(128, 128), steps=2, stages=3).network_calls  # native size: plain generation, as before

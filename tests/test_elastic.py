"""`elastic` (ElasticDiffusion): reduction to plain CFG at native size, the any-ratio resampling index
plan, implicit-overlap views, batched vs sequential references, background caching, the repaint pass
and RRG formulas, call counts, presets, determinism, every family and bad inputs.

Each deliberate difference from the official code listed in ``anysize/methods/elastic.py`` is
checked here (the test names say which: ``diff1`` ... ``diff11``).
"""

import math

import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.methods.elastic import (
    Elastic, block_upsample, gradio_table, reference_size, resampling_plan, rrg_weight,
)
from anysize.models import adapt
from anysize.noise import NoiseSpace
from anysize.sampling import StepContext, sample
from anysize.tiling_grids import block_starts, context_views

from _tiling_helpers import FakeAdapter, fake_cond, generate_latents, spy_windows


def gen(adapter, method="elastic", **kw):
    return generate_latents(adapter, method, **kw)


class PickAdapter(FakeAdapter):
    """Network-free: output = x · (mean of the prompt embedding), so with fake_cond's zero negative
    and unit positive embedding ε_u = 0 and the class direction is the input itself; a background
    'encodes' to the colour's mean."""

    def _forward(self, x, t, embeds, window):
        return x * embeds.embeds.mean(dim=(1, 2))[:, None, None, None]

    def encode(self, images, *, generator=None, sample=True, tiled="auto"):
        f = self.vae_factor
        b, _, h, w = images.shape
        self.encodes = getattr(self, "encodes", 0) + 1
        return images.mean(dim=(1, 2, 3))[:, None, None, None].expand(b, 4, h // f, w // f).clone()


def ddim(steps=4, **kw):
    from diffusers import DDIMScheduler

    kw = {"clip_sample": False, **kw}
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      set_alpha_to_one=False, steps_offset=1, **kw)
    s.set_timesteps(steps)
    return s


def ctx_for(adapter, sched, index=0, batch=1, seed=0):
    return StepContext(adapter, sched, fake_cond(batch, True), sched.timesteps, index,
                       torch.Generator().manual_seed(seed), {}, image_seeds=tuple(seed + i for i in range(batch)))


@pytest.fixture(scope="module")
def sd1(tiny):
    return adapt(tiny("sd1"), native_size=16)


# ------------------------------------------------------------------- reduction to plain generation


@pytest.mark.parametrize("family,scheduler", [("sd1", None), ("sd1", "ddim"), ("sd1", "euler"),
                                              ("sd2", None), ("sdxl", None), ("sdxl", "ddim")])
def test_native_size_r0_rrg_off_equals_plain_cfg(tiny, family, scheduler):
    adapter = adapt(tiny(family), native_size=16)
    direct = anysize.generate(adapter, "a cat", height=128, width=128, steps=3, seed=3, scheduler=scheduler,
                              output_type="latent", progress=False)
    for opts in ({"resampling_steps": 0, "rrg_init_weight": 0.0}, {"resampling_steps": 0}):
        ours = anysize.generate(adapter, "a cat", height=128, width=128, steps=3, seed=3, scheduler=scheduler,
                                method="elastic", method_options=opts, output_type="latent", progress=False)
        # RRG at native size with R = 0 pulls x0̂ towards itself: exactly nothing
        assert torch.equal(ours.latents, direct.latents), opts
        assert ours.network_calls == direct.network_calls  # the single local patch is the reference: no extra call
    # resampling at native size adds the repaint pass, which changes the result
    r2 = gen(adapter, h=128, w=128, steps=3, resampling_steps=2)
    assert (r2.latents - direct.latents).abs().max() > 1e-3


# ------------------------------------------------------------------- geometry


def test_reference_size_keeps_aspect_and_fits_native():
    assert reference_size(128, 256, (64, 64)) == (32, 64)  # SD-512 at 1024x2048: ratio 4
    assert reference_size(128, 256, (96, 96)) == (48, 96)  # SD 2.1-768 at 1024x2048: ratio 2.67
    assert reference_size(128, 192, (64, 64)) == (42, 64)  # 3.05
    assert reference_size(200, 120, (64, 64)) == (64, 38)  # portrait, 3.125
    assert reference_size(240, 135, (128, 128)) == (128, 72)  # SDXL 1920x1080 (HxW)
    assert reference_size(96, 64, (128, 128)) == (96, 64)  # below native: the canvas itself


def test_context_views_partition_and_centre():
    assert context_views(128, 32, 64) == [(0, 32, 0), (32, 64, 16), (64, 96, 48), (96, 128, 64)]  # spec §2.2
    for length in range(1, 140, 3):
        for core, window in ((8, 16), (5, 16), (16, 16), (24, 32)):
            views = context_views(length, core, window)
            owned = [k for a, b, _ in views for k in range(a, b)]
            assert owned == list(range(length))  # the owned parts partition the axis, in order
            for a, b, crop in views:
                size = min(window, length)
                assert 0 <= crop <= crop + size <= length and crop <= a < b <= crop + size
            if length > window:
                assert len(views) == math.ceil((length - core) / core) + 1


# ------------------------------------------------------------------- resampling index plan (diff1, diff7)


RATIOS = [  # (canvas latent H, W, native): ratio
    (96, 96, 64),  # 1.5
    (128, 256, 128),  # 2, non-square
    (128, 256, 96),  # 2.67
    (128, 192, 64),  # 3.05
    (128, 256, 64),  # 4
    (200, 120, 64),  # 3.125, portrait
    (90, 50, 16),  # 5.6, odd blocks
]


@pytest.mark.parametrize("hh,ww,n", RATIOS)
def test_diff1_resampling_plan_picks_one_pixel_inside_each_block(hh, ww, n):
    h, w = reference_size(hh, ww, (n, n))
    plan = resampling_plan(hh, ww, (h, w), 8, 0.5, torch.Generator().manual_seed(1))
    assert plan.shape == (8, h * w)
    ys, xs = plan // ww, plan % ww
    rs, cs = torch.tensor(block_starts(hh, h)), torch.tensor(block_starts(ww, w))
    ci = torch.arange(h).repeat_interleave(w)
    cj = torch.arange(w).repeat(h)
    assert ((ys >= rs[ci]) & (ys < rs[ci + 1]) & (xs >= cs[cj]) & (xs < cs[cj + 1])).all()
    assert torch.equal(plan[0], (rs[ci] * ww + cs[cj]))  # pass 0: the top-left pixel of each block
    assert (plan[1:] != plan[:-1]).any()  # later passes move


@pytest.mark.parametrize("hh,ww,n", RATIOS)
def test_diff1_direction_written_exactly_at_the_sampled_positions(hh, ww, n):
    """With ε_u = 0 and ε_c = input the direction of a reference cell is the canvas value it picked:
    D must equal the canvas wherever a pass picked (exact-position writes; zeros included), and the
    last pass's picked value, block-constant, elsewhere. The official bookkeeping breaks both above 2."""
    adapter = PickAdapter(native=n)
    sched = ddim()
    ctx = ctx_for(adapter, sched)
    x = torch.randn(1, 4, hh, ww, generator=torch.Generator().manual_seed(0))
    x[..., ::3, ::2] = 0.0  # a written direction of exactly 0 is still written (diff8)
    m = Elastic(resampling_steps=6, new_p=0.5)
    geo = m.geometry(adapter, hh, ww)
    run = m._run_state(ctx)
    direction, (picks, eu, d), _ = m._global(ctx, run, x, geo, 7)
    plan = resampling_plan(hh, ww, geo.ref, 7, 0.5, torch.Generator().manual_seed(0 + 0xE1A5))
    assert torch.equal(picks[0], plan[-1])
    written = torch.zeros(hh * ww, dtype=torch.bool)
    written[plan.flatten()] = True
    flat_d, flat_x = direction.flatten(2), x.flatten(2)
    assert torch.equal(flat_d[..., written], flat_x[..., written])
    assert torch.equal(eu, torch.zeros_like(eu))
    # unwritten pixels: the last pass's value of their block
    last = flat_x[..., plan[-1]].view(1, 4, *geo.ref)
    assert torch.equal(flat_d[..., ~written], block_upsample(last, (hh, ww)).flatten(2)[..., ~written])


def test_ratio_2_first_pass_is_the_strided_subsample():
    adapter = PickAdapter(native=32)
    ctx = ctx_for(adapter, ddim())
    x = torch.randn(1, 4, 32, 64)
    m = Elastic(resampling_steps=0)
    direction, (picks, _, d), _ = m._global(ctx, m._run_state(ctx), x, m.geometry(adapter, 32, 64), 1)
    assert m.geometry(adapter, 32, 64).ref == (16, 32)
    assert torch.equal(d, x[..., ::2, ::2])
    assert torch.equal(direction, x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1))


def test_diff7_switch_probability_and_unused_pixels_first():
    hh = ww = 64
    g = torch.Generator().manual_seed(0)
    assert (resampling_plan(hh, ww, (32, 32), 5, 0.0, g) == resampling_plan(hh, ww, (32, 32), 1, 0.0, g)[0]).all()
    # new_p = 1: every pass switches to a pixel not used yet, so 4 passes visit all 4 pixels of every 2x2 block
    plan = resampling_plan(hh, ww, (32, 32), 4, 1.0, g)
    assert (plan.sort(dim=0).values.diff(dim=0) > 0).all()
    assert plan.unique().numel() == hh * ww
    # the switch rate is new_p exactly (official: 30/101 for 0.3)
    plan = resampling_plan(256, 256, (128, 128), 2, 0.3, g)
    rate = (plan[1] != plan[0]).float().mean().item()
    assert abs(rate - 0.3) < 0.01


# ------------------------------------------------------------------- batched references (diff3)


def test_diff3_batched_references_equal_sequential(sd1):
    size = dict(h=128, w=320, steps=3, seed=5)
    spy, steps = {}, []
    with spy_windows(sd1) as seen:
        batched = gen(sd1, resampling_steps=4, callback=steps.append, **size)
        spy["batched"] = len(seen)
    with spy_windows(sd1) as seen:
        seq = gen(sd1, resampling_steps=4, batch_references=False, **size)
        spy["seq"] = len(seen)
    assert batched.network_calls == seq.network_calls
    assert spy["seq"] - spy["batched"] == 4 * len(steps)  # 4 more calls per step: one per extra pass
    assert (batched.latents - seq.latents).abs().max().item() <= 1e-4
    assert (batched.latents - gen(sd1, resampling_steps=0, **size).latents).abs().max().item() > 1e-3


def test_diff3_diff4_background_encoded_once_per_side_per_run():
    adapter = PickAdapter(native=16)
    sched = ddim(6)
    x = torch.randn(1, 4, 24, 64, generator=torch.Generator().manual_seed(0))  # reference 6x16: pads top and bottom
    for cache, expected in ((True, 2), (False, None)):
        adapter.encodes = 0
        state = {}
        m = Elastic(resampling_steps=2, cache_background=cache, batch_references=False)
        for i in range(len(sched.timesteps)):
            x = m.step(StepContext(adapter, sched, fake_cond(1, True), sched.timesteps, i, torch.Generator().manual_seed(0), state,
                                   image_seeds=(0,)), x)
        run = state["elastic"]
        assert len(run.colour) == 2  # one colour per side for the whole run (paper: constant colour)
        if cache:
            assert adapter.encodes == expected and len(run.clean) == 2
        else:  # the official structure: two encodes for every padded reference call (3 passes + repaint)
            assert adapter.encodes == 2 * (3 + 1) * 5 + 2 * 3
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("mode", ["per_step", "gray"])
def test_diff4_background_per_step_and_gray(mode):
    """per_step: a new colour per side every step (the official code's timing), encoded once per
    step; gray: one mid-gray for every side and step, no colour draw."""
    encoded = []

    class Recording(PickAdapter):
        def encode(self, images, **kw):
            encoded.append(images[0, :, 0, 0].clone())  # the constant colour that was encoded
            return super().encode(images, **kw)

    adapter = Recording(native=16)
    sched = ddim(6)
    x = torch.randn(1, 4, 24, 64, generator=torch.Generator().manual_seed(0))
    state = {}
    m = Elastic(resampling_steps=2, background=mode)
    for i in range(len(sched.timesteps)):
        x = m.step(StepContext(adapter, sched, fake_cond(1, True), sched.timesteps, i, torch.Generator().manual_seed(0), state,
                                   image_seeds=(0,)), x)
    run = state["elastic"]
    assert [tuple(c.tolist()) for c in encoded] == [tuple(c.tolist()) for c in run.colour.values()]
    steps = len(sched.timesteps)
    if mode == "per_step":
        assert set(run.colour) == {(0, side, i) for side in ("top", "bottom") for i in range(steps)}
        colours = torch.stack(list(run.colour.values()))
        assert len(torch.unique(colours, dim=0)) == 2 * steps  # every step and side its own colour
        assert adapter.encodes == 2 * steps  # re-encoded once per step, not per call
    else:
        assert all(torch.equal(c, torch.full((3,), 0.5)) for c in run.colour.values()) and len(run.colour) == 2
        assert adapter.encodes == 2
    assert torch.isfinite(x).all()


def test_background_reaches_the_network(sd1):
    """On a real (tiny) U-Net the pad colour changes the reference's prediction, so each choice
    gives its own image; the same choice and seed give the same image."""
    size = dict(h=64, w=192, steps=2, seed=5)  # 3:1 canvas: the reference is padded top and bottom
    runs = {b: gen(sd1, resampling_steps=1, background=b, **size).latents for b in ("per_run", "per_step", "gray")}
    assert torch.equal(runs["gray"], gen(sd1, resampling_steps=1, background="gray", **size).latents)
    for a, b in (("per_run", "per_step"), ("per_run", "gray"), ("per_step", "gray")):
        assert (runs[a] - runs[b]).abs().max().item() > 1e-4, (a, b)


def test_corner_blocks_below_native_on_both_axes_take_the_top_and_bottom_colour():
    """The official background_pad pads the width first (left/right blocks as tall as the input),
    then the height across the whole padded width: the corners belong to the top/bottom bars."""
    adapter = PickAdapter(native=16)
    sched = ddim(4)
    m = Elastic(resampling_steps=0)
    ctx = StepContext(adapter, sched, fake_cond(1, True), sched.timesteps, 0, None, {}, image_seeds=(0,))
    run = m._run_state(ctx)
    z = torch.randn(1, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    padded, (top, left) = m._pad(ctx, run, z, [0], (16, 16))
    assert padded.shape[-2:] == (16, 16) and (top, left) == (5, 3)
    bar = {side: run.noisy[(0, side, size, None)] for side, size in
           (("top", (5, 16)), ("bottom", (5, 16)), ("left", (6, 3)), ("right", (6, 3)))}
    assert torch.equal(padded[0, :, :5], bar["top"]) and torch.equal(padded[0, :, 11:], bar["bottom"])
    assert torch.equal(padded[0, :, 5:11, :3], bar["left"]) and torch.equal(padded[0, :, 5:11, 13:], bar["right"])
    assert torch.equal(padded[0, :, 5:11, 3:13], z[0])
    # the corners: the top/bottom colour (PickAdapter encodes a colour to its mean), not the left/right one
    mean = {side: run.colour[(0, side, None)].mean() for side in bar}
    assert len({round(float(v), 6) for v in mean.values()}) == 4
    assert run.clean[(0, "top", (5, 16), None)].mean() == pytest.approx(float(mean["top"]), abs=1e-6)


def test_background_choice_is_checked():
    with pytest.raises(InvalidArgumentError, match="per_run, per_step, gray"):
        Elastic(background="blue")


# ------------------------------------------------------------------- call counts


@pytest.mark.parametrize("hh,ww,r,repaint,vb", [(16, 16, 0, True, 1), (24, 40, 2, True, 3), (40, 24, 3, False, 16),
                                               (10, 12, 1, True, 2), (64, 20, 0, False, 5), (12, 48, 2, True, 4)])
def test_call_counts_match_the_cost_model(hh, ww, r, repaint, vb):
    adapter = PickAdapter(native=16)
    sched = ddim(5)
    m = anysize.methods.create("elastic", resampling_steps=r, repaint=repaint, view_batch_size=vb)
    geo = m.geometry(adapter, hh, ww)
    per_step = []
    prev = [0]

    def count(info):
        per_step.append(adapter.calls - prev[0])
        prev[0] = adapter.calls

    x = torch.randn(2, 4, hh, ww, generator=torch.Generator().manual_seed(0))
    with spy_windows(adapter) as seen:
        sample(m, adapter, x, fake_cond(2, True), sched, sched.timesteps, seeds=[0, 1],
               generator=torch.Generator().manual_seed(0), callback=count, progress=False)
    p = 0 if geo.local_is_reference else geo.views
    full = 2 * (r + 1) + p + ((2 + p) if repaint and r > 0 else 0)
    last = 2 * (r + 1) + p
    assert per_step == [2 * full] * 4 + [2 * last]
    assert m.evaluations_per_step(adapter, hh, ww) == full
    assert all((win.height, win.width) == (16, 16) for _, win, _ in seen)  # every call is native-size
    local_calls = math.ceil(p / vb)
    ref_calls = 1
    passes = 1 + (1 if repaint and r > 0 else 0)
    assert len(seen) == 4 * passes * (ref_calls + local_calls) + (ref_calls + local_calls)


def test_diff2_native_size_comes_from_the_model(tiny):
    adapter = adapt(tiny("sd2"), native_size=24)
    with spy_windows(adapter) as seen:
        gen(adapter, h=256, w=384, steps=2, resampling_steps=1)
    assert {(w.height, w.width) for _, w, _ in seen} == {(24, 24)}
    m = Elastic()
    geo = m.geometry(adapter, 32, 48)
    assert geo.ref == (16, 24) and geo.rows == context_views(32, 12, 24)


def test_diff10_sdxl_calls_are_native_images_and_patches_share_calls(tiny):
    adapter = adapt(tiny("sdxl"), native_size=16)
    with spy_windows(adapter) as seen:
        res = gen(adapter, h=256, w=256, steps=2, resampling_steps=0, view_batch_size=16)
    assert {w for _, w, _ in seen} == {anysize.models.base.Window.full(16, 16)}
    # per step: one reference call and one call for all 16 local patches (32x32 latent, cores of 8)
    assert len(seen) == 2 * 2 and res.network_calls == 2 * (2 + 16)


# ------------------------------------------------------------------- repaint pass and RRG (diff6, diff9)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_diff6_move_is_the_ddim_step_and_renoise_is_the_exact_forward_jump(ptype):
    sched = ddim(10, prediction_type=ptype)
    ns = NoiseSpace.of(sched)
    t, t_prev = sched.timesteps[3], sched.timesteps[4]
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    x0 = ns.to_x0(x, out, t, ptype)
    expect = sched.step(out, t, x, eta=0.0).prev_sample
    assert torch.allclose(ns.move(x, x0, t, t_prev), expect, atol=1e-6)
    ac = sched.alphas_cumprod.double()
    noise = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    ratio = ac[int(t)] / ac[int(t_prev)]
    assert torch.allclose(ns.renoise(expect, t_prev, t, noise), ratio.sqrt() * expect + (1 - ratio).sqrt() * noise,
                          atol=1e-10)
    with pytest.raises(InvalidArgumentError, match="less noisy"):
        ns.renoise(expect, t, t_prev, noise)


@pytest.mark.parametrize("clipping", [dict(clip_sample=True), dict(clip_sample=True, clip_sample_range=0.5),
                                      dict(thresholding=True, sample_max_value=3.0)])
@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_move_clips_x0_as_a_clipping_ddim_step_does(ptype, clipping):
    """The repaint proposal is DDIM's own step also when the scheduler clips its x0 estimate
    (the official code: scheduler.step(...).prev_sample): clipped clean part, the model's noise."""
    sched = ddim(10, prediction_type=ptype, **clipping)
    ns = NoiseSpace.of(sched)
    t, t_prev = sched.timesteps[3], sched.timesteps[4]
    g = torch.Generator().manual_seed(0)
    x, out = (torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    x0 = ns.to_x0(x, out, t, ptype)
    step = sched.step(out, t, x, eta=0.0)
    assert not torch.allclose(x0, step.pred_original_sample)  # the clipping is active here
    assert torch.allclose(ns.clip_x0(x0), step.pred_original_sample, atol=1e-10)
    assert torch.allclose(ns.move(x, x0, t, t_prev), step.prev_sample, atol=1e-8)


def test_clip_x0_leaves_schedulers_that_do_not_clip_alone():
    from diffusers import EulerDiscreteScheduler

    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    for sched in (ddim(4), EulerDiscreteScheduler()):
        assert NoiseSpace.of(sched).clip_x0(x0) is x0


def test_diff6_scheduler_steps_once_per_timestep_with_repaint(sd1):
    from diffusers import EulerDiscreteScheduler

    calls = []
    original = EulerDiscreteScheduler.step

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    EulerDiscreteScheduler.step = counted
    try:
        res = anysize.generate(sd1, "a cat", height=128, width=256, steps=4, seed=0, scheduler="euler",
                               method="elastic", method_options={"resampling_steps": 2}, output_type="latent",
                               progress=False)
    finally:
        EulerDiscreteScheduler.step = original
    assert len(calls) == 4 and torch.isfinite(res.latents).all()


def test_diff9_rrg_is_the_official_gradient_step_from_the_last_reference():
    """R = 0, no repaint: ε_u = 0 everywhere and D = U(x[::2, ::2]) (PickAdapter), so the RRG term
    2λ/(C·H·W)·(U(x0_ref) - x0̂) reduces to 2λ/(C·H·W)/√ᾱ_t·(U(z) - x) for ε-prediction DDIM."""
    adapter = PickAdapter(native=16)
    sched = ddim(10)
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = {}
    for lam in (0.0, 5000.0):
        m = Elastic(resampling_steps=0, rrg_init_weight=lam, cosine_scale=3.0)
        outs[lam] = m.step(StepContext(adapter, sched, fake_cond(1, True), sched.timesteps, 0, None, {}, image_seeds=(0,)), x)
    a = sched.alphas_cumprod[int(sched.timesteps[0])].sqrt()
    up = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)
    expect = 2 * 5000.0 / (4 * 32 * 32) / a * (up - x)
    assert torch.allclose(outs[5000.0] - outs[0.0], expect, atol=1e-5)
    assert expect.abs().max() > 1e-2


@pytest.mark.parametrize("clipping", [dict(clip_sample=True), dict(thresholding=True, sample_max_value=2.0)])
def test_rrg_on_a_clipping_ddim_uses_the_schedulers_clipped_estimates(clipping):
    """With clip_sample / thresholding both RRG estimates are the scheduler's pred_original_sample,
    as in the official reduced_resolution_guidance: the reference's from DDIM's step on the
    reference, the canvas's from its step on the canvas."""
    adapter = PickAdapter(native=16)
    sched = ddim(10, **clipping)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    lam = 5000.0

    def rrg_term(s):
        outs = [Elastic(resampling_steps=0, rrg_init_weight=w, cosine_scale=3.0).step(
            StepContext(adapter, s, fake_cond(1, True), s.timesteps, 0, None, {}, image_seeds=(0,)), x)
            for w in (0.0, lam)]
        return outs[1] - outs[0]

    # PickAdapter: ε_u = 0 and the direction is the input, so the guided outputs are w·z (reference
    # z = x[::2, ::2]) and w·U(z) (canvas); the official term is -∇ λ·mse(U(x0_ref), x0̂)
    w = fake_cond(1, True).guidance_scale
    z = x[..., ::2, ::2]
    up = z.repeat_interleave(2, -2).repeat_interleave(2, -1)
    t = sched.timesteps[0]
    x0_ref = sched.step(w * z, t, z).pred_original_sample
    x0_hat = sched.step(w * up, t, x).pred_original_sample
    u_ref = x0_ref.repeat_interleave(2, -2).repeat_interleave(2, -1)
    expect = 2 * lam / (4 * 32 * 32) * (u_ref - x0_hat)
    ours = rrg_term(sched)
    assert torch.allclose(ours, expect, atol=1e-5)
    unclipped = rrg_term(ddim(10))
    assert (unclipped - ours).abs().max() > 10 * expect.abs().max()  # clipping changes the term a lot here


def test_rrg_schedule_matches_the_official_table():
    n = 50
    cli = [rrg_weight(i, n, 4000, 10, 0.2) for i in range(n)]
    assert [round(cli[i]) for i in (0, 5, 10)] == [4000, 2714, 821]
    assert max(i for i in range(n) if cli[i] > 10) == 18
    default = [rrg_weight(i, n, 1000, 3.0, 0.2) for i in range(n)]
    assert [round(default[i]) for i in (0, 5, 10)] == [1000, 890, 622]
    assert max(i for i in range(n) if default[i] > 10) == 27
    demo = [rrg_weight(i, n, 1000, 10, 0.4) for i in range(n)]
    assert [round(demo[i]) for i in (0, 5, 10)] == [1000, 500, 56] and max(i for i in range(n) if demo[i] > 10) == 12


# ------------------------------------------------------------------- families, schedulers, sizes


@pytest.mark.parametrize("family,scheduler", [("sd1", "ddim"), ("sd1", "euler"), ("sd2", None), ("sd2", "dpm++2m"),
                                              ("sdxl", None)])
def test_families_and_schedulers_non_native_non_square(tiny, family, scheduler):
    adapter = adapt(tiny(family), native_size=16)
    a = anysize.generate(adapter, "a cat", height=192, width=320, steps=3, seed=1, scheduler=scheduler, method="elastic",
                         method_options={"resampling_steps": 2}, output_type="latent", progress=False)
    b = anysize.generate(adapter, "a cat", height=192, width=320, steps=3, seed=1, scheduler=scheduler, method="elastic",
                         method_options={"resampling_steps": 2}, output_type="latent", progress=False)
    assert a.latents.shape[-2:] == (24, 40) and torch.isfinite(a.latents).all()
    assert torch.equal(a.latents, b.latents)
    d = anysize.generate(adapter, "a cat", height=192, width=320, steps=3, seed=1, scheduler=scheduler,
                         output_type="latent", progress=False)
    assert (a.latents - d.latents).abs().max() > 1e-3


def test_smaller_than_native_pads_canvas_for_reference_and_patch_alike(sd1):
    with spy_windows(sd1) as seen:
        res = gen(sd1, h=64, w=96, steps=3, resampling_steps=1)
    assert {(w.height, w.width) for _, w, _ in seen} == {(16, 16)}
    # PNDM: 4 evaluations; per step 2·2 references + 2 for the repaint pass, the local patch is the reference
    assert res.network_calls == 4 * (4 + 2) - 2
    assert res.latents.shape[-2:] == (8, 12) and torch.isfinite(res.latents).all()


# ------------------------------------------------------------------- determinism and seeds (diff5)


# ------------------------------------------------------------------- presets and options


def test_presets_and_defaults():
    o = Elastic().options
    assert (o.resampling_steps, o.new_p, o.rrg_init_weight, o.cosine_scale, o.rrg_stop_t, o.repaint, o.patch_size) == \
        (20, 0.3, 1000.0, 3.0, 0.2, True, None)  # official generate_image()
    cli = Elastic(preset="cli").options
    assert (cli.resampling_steps, cli.rrg_init_weight, cli.cosine_scale) == (10, 4000.0, 10.0)
    assert Elastic(preset="readme", resampling_steps=2).options.resampling_steps == 2  # explicit wins
    m = Elastic(preset="gradio")
    n = (128, 128)
    assert m.settings(256, 256, n) == (10, 2000.0) and m.settings(256, 192, n) == (10, 1500.0)
    assert m.settings(128, 256, n) == (7, 1000.0) and m.settings(96, 96, n) == (0, 0.0)
    assert gradio_table(135, 240, n) == (7, 1000.0)  # 1080x1920
    assert Elastic(preset="gradio").options.rrg_stop_t == 0.4


def test_msw_msa_composes_and_restores(tiny):
    adapter = adapt(tiny("sd1"), native_size=16)
    before = {k: id(v) for k, v in adapter.network.attn_processors.items()}
    plain = gen(adapter, h=128, w=256, steps=2, resampling_steps=1)
    windowed = gen(adapter, h=128, w=256, steps=2, resampling_steps=1, msw_msa=True)
    assert (plain.latents - windowed.latents).abs().max() > 1e-4
    assert {k: id(v) for k, v in adapter.network.attn_processors.items()} == before
    assert torch.equal(gen(adapter, h=128, w=256, steps=2, resampling_steps=1).latents, plain.latents)


def test_demo_options_are_lighter(sd1):
    light = Elastic(**Elastic.demo_options(sd1))
    assert light.evaluations_per_step(sd1, 64, 64) < Elastic().evaluations_per_step(sd1, 64, 64)


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"resampling_steps": -1}, "resampling_steps"),
        ({"resampling_steps": 1.5}, "resampling_steps"),
        ({"resampling_steps": None}, "only be unset with preset 'gradio'"),
        ({"new_p": 1.5}, r"new_p .* \[0, 1\]"),
        ({"rrg_init_weight": -1.0}, "rrg_init_weight"),
        ({"cosine_scale": -2}, "cosine_scale"),
        ({"rrg_stop_t": 2}, r"rrg_stop_t .* \[0, 1\]"),
        ({"repaint": "yes"}, "repaint"),
        ({"repaint_divisor": 0}, "repaint_divisor"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 17}, r"larger than the native latent size 16: use 1\.\.16"),
        ({"view_batch_size": 0}, "view_batch_size"),
        ({"preset": "paper"}, "cli, readme, gradio"),
        ({"drop_p": 0.7}, "no option drop_p"),  # the official README's argument
    ],
)
def test_diff11_bad_inputs(sd1, opts, match):
    with pytest.raises(InvalidArgumentError, match=match):
        gen(sd1, h=128, w=256, steps=1, **opts)


def test_bad_inputs_no_cfg_family_and_size(tiny, sd1):
    calls = sd1.calls
    with pytest.raises(InvalidArgumentError, match=r"^method 'elastic' needs classifier-free guidance: give guidance > 1 \(got 1;"):
        anysize.generate(sd1, "a cat", height=128, width=256, steps=1, guidance=1.0, method="elastic",
                         output_type="latent", progress=False)
    assert sd1.calls == calls  # refused before any work
    with pytest.raises(InvalidArgumentError, match="supports sd1, sd2, sdxl"):
        gen(adapt(tiny("flux"), native_size=16), h=128, w=128, steps=1)
    from anysize.errors import InvalidSizeError

    with pytest.raises(InvalidSizeError, match="multiple of 8"):
        gen(sd1, h=130, w=256, steps=1)


def test_background_encode_upcasts_an_fp16_vae():
    """The official code encodes the pad in fp32 when the SDXL VAE is fp16; so does adapter.encode."""
    from anysize.builders import tiny_pipeline

    pipe = tiny_pipeline("sdxl")
    pipe.vae.to(torch.float16)
    adapter = adapt(pipe, native_size=16)
    z = adapter.encode(torch.full((1, 3, 32, 64), 0.3), generator=torch.Generator().manual_seed(0))
    assert pipe.vae.dtype == torch.float16 and z.dtype == torch.float32 and torch.isfinite(z).all()


def test_elastic_refines_a_latent_canvas_like_any_loop_method(tiny):
    """img2img (upscaling) goes through the same seeded loop: deterministic, and the seeds are the job's."""
    from anysize.request import Request
    from anysize.methods import create
    from anysize.models import adapt
    from anysize.sampling import make_generators

    adapter = adapt(tiny("sd1"))

    def job(seed):
        cond = adapter.encode_prompt(["a cat"], None, guidance_scale=7.5)
        return Request(adapter, ["a cat"], None, 192, 256, 4, 7.5, [seed], None, cond, make_generators(seed, 1), progress=False)

    clean = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(0))
    m = create("elastic", resampling_steps=1)
    a, b, c = m.refine(job(3), clean, 0.5), m.refine(job(3), clean, 0.5), m.refine(job(4), clean, 0.5)
    assert a.shape == clean.shape and torch.equal(a, b) and not torch.allclose(a, c)
    assert not hasattr(m, "_seeds")


def test_an_upscale_without_a_prompt_keeps_the_guidance_elastic_needs(sd1):
    # with neither prompt nor negative an upscale runs without CFG, except for a method that needs it
    from PIL import Image

    source = Image.new("RGB", (128, 128), (200, 40, 40))
    out = anysize.upscale(sd1, source, scale=2, method="elastic", steps=3, progress=False, output_type="latent")
    assert out.config["guidance"] == sd1.default_guidance > 1
    assert anysize.upscale(sd1, source, scale=2, method="direct", steps=3, progress=False,
                           output_type="latent").config["guidance"] == 1.0
    with pytest.raises(InvalidArgumentError, match="needs classifier-free guidance"):
        anysize.upscale(sd1, source, scale=2, method="elastic", steps=2, guidance=1.0, progress=False)

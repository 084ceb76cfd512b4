"""`rectifiedhr`: reduction to `direct`, network calls and guidance per phase, the refresh itself,
determinism, any size and ratio, bad options, and each deliberate difference from the official
code listed in its docstring.

Its agreement with the official pipeline itself (phase by phase, pinned randomness) is measured by
``benchmarks/rectifiedhr_fidelity``, which needs a copy of the official code.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler

import anysize
from anysize import methods
from anysize.errors import InvalidArgumentError
from anysize.methods import rectifiedhr as rhr
from anysize.builders import tiny_pipeline
from anysize.models import adapt

from _tiling_helpers import generate_latents

STEPS = 5


@pytest.fixture(scope="module")
def adapters(tiny):
    cache = {}

    def get(family, ddim=False):
        if (family, ddim) not in cache:
            pipe = tiny(family) if not ddim else tiny_pipeline(family)
            if ddim:  # the scheduler the official SDXL script sets, with the released config's settings
                pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                                           set_alpha_to_one=False)
            cache[(family, ddim)] = adapt(pipe, native_size=16)
        return cache[(family, ddim)]

    return get


def gen(adapter, method="rectifiedhr", **kw):
    kw.setdefault("steps", STEPS)
    return generate_latents(adapter, method, **kw)


def trace(adapter, **kw):
    """Per step of one rectifiedhr run: (stage, network calls made in it, the CFG scale seen)."""
    seen, rows = [], []
    predict = adapter.predict_guided

    def spy(x, t, cond, window=None):
        seen.append(cond.guidance_scale if cond.do_cfg else None)
        return predict(x, t, cond, window)

    calls = [adapter.calls]

    def record(info):
        rows.append((info.stage, adapter.calls - calls[0], seen[-1], tuple(info.latents.shape[-2:])))
        calls[0] = adapter.calls

    adapter.predict_guided = spy
    try:
        result = gen(adapter, callback=record, **kw)
    finally:
        del adapter.predict_guided
    return result, rows


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_native_size_and_below_is_direct(adapters, family):
    adapter = adapters(family)
    for h, w in ((128, 128), (96, 128)):
        direct = gen(adapter, "direct", h=h, w=w)
        ours = gen(adapter, h=h, w=w)
        assert torch.equal(ours.latents, direct.latents)
        assert ours.network_calls == direct.network_calls
    # one phase is plain generation at the target at any size
    direct = gen(adapter, "direct", h=128, w=256)
    assert torch.equal(gen(adapter, h=128, w=256, phases=1).latents, direct.latents)


def test_calls_per_phase(adapters):
    adapter = adapters("sdxl")
    # 2x: the official 2048² config, T_1 = 0.6·N; 30 steps cut at 18 (the official denoising_end
    # rule would cut DDIM's 30 leading timesteps at 17)
    _, rows = trace(adapter, h=256, w=256, steps=30)
    stages = [r[0] for r in rows]
    assert stages == ["phase 1/2"] * 18 + ["phase 2/2"] * 12
    assert all(r[1] == 2 for r in rows)  # one call per image, two with CFG
    assert {r[3] for r in rows[:18]} == {(16, 16)} and {r[3] for r in rows[18:]} == {(32, 32)}
    # 4x: the official 4096² config: 3 phases at [0, 8, 9] of 10 steps
    _, rows = trace(adapter, h=512, w=512, steps=10)
    assert [r[0] for r in rows] == ["phase 1/3"] * 8 + ["phase 2/3"] + ["phase 3/3"]
    assert [r[3] for r in rows[7:]] == [(16, 16), (40, 40), (64, 64)]
    # a batch of two: the calls double, the phases are the same
    _, rows = trace(adapter, h=256, w=256, steps=5, prompt=["a", "b"], seed=[1, 4])
    assert [r[1] for r in rows] == [4] * 5 and [r[0] for r in rows] == ["phase 1/2"] * 3 + ["phase 2/2"] * 2


def test_guidance_ramp_per_phase(adapters):
    adapter = adapters("sd1")
    # the run's guidance (sd1: 7.5) rising to 30; the tiny SD 1.x runs PNDM, whose schedule holds
    # one entry more than its steps, run by the last phase
    _, rows = trace(adapter, h=256, w=256, steps=5)
    assert [r[2] for r in rows] == [7.5] * 3 + [30.0] * 3
    _, rows = trace(adapter, h=512, w=512, steps=10, guidance_max=20.0, guidance_power=2.0)
    assert [r[2] for r in rows] == [7.5] * 8 + [7.5 + 12.5 * 0.25] + [20.0] * 2
    # a run without CFG keeps its conditioning (FLUX.1 is guidance-distilled); guidance_max is refused
    flux = adapters("flux")
    _, rows = trace(flux, h=256, w=256)
    assert {r[2] for r in rows} == {None}
    with pytest.raises(InvalidArgumentError, match="guidance_max needs classifier-free guidance"):
        gen(flux, h=256, w=256, guidance_max=10.0)


def test_phase_one_is_plain_generation_on_the_base(adapters):
    # Euler (the tiny SDXL's scheduler): the first noise is scaled by init_noise_sigma
    adapter = adapters("sdxl")
    assert getattr(adapter.scheduler, "init_noise_sigma", 1.0) > 1
    states = {}
    gen(adapter, h=256, w=256, steps=STEPS, callback=lambda i: states.setdefault(("ours", i.stage, i.index), i.latents))
    gen(adapter, "direct", h=128, w=128, steps=STEPS,
        callback=lambda i: states.setdefault(("direct", i.index), i.latents))
    last = 2  # phase 1 runs round(0.6·5) = 3 steps
    assert ("ours", "phase 1/2", last) in states and ("ours", "phase 1/2", last + 1) not in states
    assert torch.allclose(states[("ours", "phase 1/2", last)], states[("direct", last)], atol=1e-6)


def _refresh_records(adapter, monkeypatch, **kw):
    """The clean estimates DDIM predicted, and each refresh's input, resized input and start."""
    rec = {"pred": [], "x0": [], "resized": [], "start": [], "t": []}
    step = DDIMScheduler.step

    def spy_step(self, model_output, timestep, sample, *a, return_dict=True, **k):
        out = step(self, model_output, timestep, sample, *a, return_dict=True, **k)
        rec["pred"].append(out.pred_original_sample)
        return out if return_dict else (out.prev_sample, out.pred_original_sample)

    resize = rhr.RectifiedHR.resize

    def spy_resize(self, request, x0, size):
        out = resize(self, request, x0, size)
        rec["x0"].append(x0), rec["resized"].append(out)
        return out

    from_x0 = type(adapter).from_x0

    def spy_from_x0(self, scheduler, x0, noise, t):
        out = from_x0(self, scheduler, x0, noise, t)
        if rec["resized"] and len(rec["start"]) < len(rec["resized"]):
            rec["start"].append(out), rec["t"].append(t)
        return out

    monkeypatch.setattr(DDIMScheduler, "step", spy_step)
    monkeypatch.setattr(rhr.RectifiedHR, "resize", spy_resize)
    monkeypatch.setattr(type(adapter), "from_x0", spy_from_x0)
    result = gen(adapter, **kw)
    monkeypatch.undo()
    return result, rec


def test_refresh_renoises_the_resized_clean_estimate(adapters, monkeypatch):
    adapter = adapters("sdxl", ddim=True)
    result, rec = _refresh_records(adapter, monkeypatch, h=256, w=256, steps=STEPS, seed=3)
    # the clean estimate at phase 1's last step (step 3 of 5) is DDIM's own pred_original_sample
    assert len(rec["x0"]) == 1 and torch.allclose(rec["x0"][0], rec["pred"][2], atol=1e-5)
    assert rec["resized"][0].shape[-2:] == (32, 32)
    # re-noised to the first timestep of phase 2 with the image's next noise draw
    g = torch.Generator().manual_seed(3)
    torch.randn((1, 4, 16, 16), generator=g)
    noise = torch.randn((1, 4, 32, 32), generator=g)
    scheduler = DDIMScheduler.from_config(adapter.scheduler.config)
    scheduler.set_timesteps(STEPS)
    assert int(rec["t"][0]) == int(scheduler.timesteps[3])
    expected = scheduler.add_noise(rec["resized"][0], noise, scheduler.timesteps[3:4])
    assert torch.allclose(rec["start"][0], expected, atol=1e-5)
    # pixel resize: decode, 8-bit image, bicubic, encode the posterior mean: near the latent
    # bicubic of the same estimate (a random VAE does not reproduce its input, so: correlated)
    lat = torch.nn.functional.interpolate(rec["x0"][0], size=(32, 32), mode="bicubic")
    assert not torch.allclose(rec["resized"][0], lat, atol=1e-3)


def test_refresh_draws_fresh_noise_per_image(adapters, monkeypatch):
    adapter = adapters("sdxl", ddim=True)
    _, rec = _refresh_records(adapter, monkeypatch, h=256, w=256, steps=STEPS, seed=[3, 8],
                              prompt=["a", "b"], resize="latent")
    scheduler = DDIMScheduler.from_config(adapter.scheduler.config)
    scheduler.set_timesteps(STEPS)
    for i, seed in enumerate((3, 8)):
        g = torch.Generator().manual_seed(seed)
        first = torch.randn((1, 4, 16, 16), generator=g)
        noise = torch.randn((1, 4, 32, 32), generator=g)  # fresh: not the first draw resized
        expected = scheduler.add_noise(rec["resized"][0][i : i + 1], noise, scheduler.timesteps[3:4])
        assert torch.allclose(rec["start"][0][i : i + 1], expected, atol=1e-5)
        up = torch.nn.functional.interpolate(first, size=(32, 32), mode="bicubic")
        assert not torch.allclose(noise, up, atol=0.1)


def test_latent_resize_skips_the_vae(adapters, monkeypatch):
    adapter = adapters("sd1")
    decodes = []
    decode = type(adapter).decode
    monkeypatch.setattr(type(adapter), "decode", lambda self, z, **k: decodes.append(z.shape) or decode(self, z, **k))
    pixel = gen(adapter, h=384, w=384, steps=10, prompt=["a", "b"], seed=[1, 2])
    assert decodes == [(2, 4, 16, 16), (2, 4, 32, 32)]  # one decode per refresh (the output stays latent)
    decodes.clear()
    latent = gen(adapter, h=384, w=384, steps=10, prompt=["a", "b"], seed=[1, 2], resize="latent")
    assert decodes == []
    assert latent.latents.shape == pixel.latents.shape
    assert (latent.latents - pixel.latents).abs().max() > 1e-3


def test_pixel_refresh_batch_and_alone_differ_by_8_bit_levels_only(adapters, monkeypatch):
    import PIL.Image

    adapter = adapters("sd3")
    images = []
    fromarray = PIL.Image.fromarray
    monkeypatch.setattr(PIL.Image, "fromarray", lambda a, *k: images.append(a.astype(int)) or fromarray(a, *k))
    run = dict(h=128, w=320, steps=3)
    batch = gen(adapter, prompt=["a red circle", "a blue square"], seed=[5, 9], **run)
    alone = gen(adapter, prompt="a red circle", seed=5, **run)
    assert len(images) == 3  # one refresh: two images in the batch, one alone
    levels = abs(images[0] - images[2])
    assert levels.max() <= 1 and (levels > 0).mean() < 0.01  # a few pixels one level apart, no more
    # without the 8-bit image, batch and alone agree to float rounding
    quick = dict(resize="latent", **run)
    batch = gen(adapter, prompt=["a red circle", "a blue square"], seed=[5, 9], **quick)
    alone = gen(adapter, prompt="a red circle", seed=5, **quick)
    assert (batch.latents[0] - alone.latents[0]).abs().max() <= 1e-4


def test_any_size_and_ratio(adapters):
    sd1, sd3 = adapters("sd1"), adapters("sd3")
    for adapter, (h, w) in ((sd1, (17, 43)), (sd1, (50, 23)), (sd1, (64, 64)), (sd3, (18, 50)), (sd3, (52, 26)),
                            (sd1, (21, 147))):
        m = adapter.size_multiple // adapter.vae_factor
        for phases in (2, 3, 4):
            sizes = rhr.phase_sizes(adapter, h, w, phases)
            assert len(sizes) == phases and sizes[-1] == (h, w)
            assert all(a % m == 0 and b % m == 0 for a, b in sizes[:-1])
            assert all(s0 <= s1 for p, q in zip(sizes, sizes[1:]) for s0, s1 in zip(p, q))
            base = sizes[0]
            assert abs(base[0] * base[1] / 256 - 1) < 0.35  # about the native area (16x16)
            assert abs((base[1] / base[0]) / (w / h) - 1) < 0.25  # at the target's ratio
    # the long side is rounded up from short·ratio: 21x147 at ratio 7 never gets one multiple too long
    assert rhr.phase_sizes(sd1, 21, 147, 2) == [(6, 42), (21, 147)]
    # a phase resized when its height alone differs; runs end at the exact target
    for adapter, (h, w) in ((sd1, (136, 344)), (sd1, (344, 136)), (sd3, (144, 400))):
        out = gen(adapter, h=h, w=w, steps=STEPS)
        assert out.latents.shape[-2:] == (h // 8, w // 8)
        assert torch.isfinite(out.latents).all()


def test_defaults_are_the_official_configs(adapters):
    adapter = adapters("sd1")
    m = methods.create("rectifiedhr")
    assert m.options.resize == "pixel"
    assert m.settings(adapter, 16, 16)["phases"] == 1 and m.settings(adapter, 8, 16)["phases"] == 1
    # configs_sdxl.py: 2048² (2x), 2048x4096 (2.8x), 4096² (4x) over the native 1024²
    assert m.settings(adapter, 32, 32) == dict(phases=2, guidance_max=30.0, guidance_power=1.0, refresh_start=0.6,
                                               refresh_power=1.0)
    assert m.settings(adapter, 32, 64) == dict(phases=3, guidance_max=50.0, guidance_power=1.0, refresh_start=0.8,
                                               refresh_power=1.0)
    assert m.settings(adapter, 64, 64) == dict(phases=3, guidance_max=50.0, guidance_power=0.5, refresh_start=0.8,
                                               refresh_power=0.5)
    # the official quantic_step / quantic_cfg at 50 steps and cfg_min 5
    assert rhr.refresh_steps(50, 2, 0.6, 1.0) == [0, 30, 50]
    assert rhr.refresh_steps(50, 3, 0.8, 1.0) == [0, 40, 45, 50]
    assert rhr.refresh_steps(50, 3, 0.8, 0.5) == [0, 40, 47, 50]
    assert rhr.guidance_scales(5, 30, 2, 1.0) == [5, 30]
    assert rhr.guidance_scales(5, 50, 3, 0.5) == [5, 5 + 45 * math.sqrt(0.5), 50]
    # the official quantic_HW for 2048² from 1024² and 2048x4096 from 768x1536 (here in latents /8)
    sdxl = adapters("sdxl")  # native 16 latent px stands for 1024 px: sizes scale by 64
    assert rhr.phase_sizes(sdxl, 32, 32, 2) == [(16, 16), (32, 32)]
    # the run's guidance is the first phase's scale (official cfg_min 5 = SDXL's guidance)
    assert sdxl.default_guidance == 5.0


def test_bad_options(adapters):
    for options, words in (({"phases": 0}, "phases must be an integer in [1, 16]"),
                           ({"resize": "nearest"}, "pixel, latent"),
                           ({"refresh_start": 1.0}, "refresh_start must be in (0, 1)"),
                           ({"guidance_max": -1}, "guidance_max must be a number >= 0"),
                           ({"guidance_power": 0}, "guidance_power must be a number > 0"),
                           ({"window": 3}, "has no option window")):
        with pytest.raises(InvalidArgumentError) as e:
            methods.create("rectifiedhr", **options)
        assert words in str(e.value) and "\n" not in str(e.value)
    adapter = adapters("sd1")
    calls = adapter.calls
    with pytest.raises(InvalidArgumentError, match="leave phase 2 without a step") as e:
        gen(adapter, h=384, w=384, steps=5, phases=3)  # 3 phases at [0, 4, 4, 5]
    assert "\n" not in str(e.value)
    # unset, the config's 3 phases drop to the 2 that 5 steps allow
    assert methods.create("rectifiedhr").plan(adapter, 48, 48, 5, 7.5).bounds == [0, 4, 5]
    with pytest.raises(InvalidArgumentError, match="takes 2 network calls per step"):
        anysize.generate(adapter, "a", height=256, width=256, steps=4, method="rectifiedhr", scheduler="heun",
                         output_type="latent", progress=False)
    assert adapter.calls == calls  # refused before any network call
    sd3 = adapters("sd3")
    limit = sd3.network.pos_embed.pos_embed_max_size * sd3.patch * sd3.vae_factor
    calls = sd3.calls
    with pytest.raises(InvalidArgumentError, match="position table covers"):
        gen(sd3, h=128, w=limit + 16)
    assert sd3.calls == calls


def test_it_is_a_bench_row(adapters):
    from anysize import bench

    rec = bench.bench_one(adapters("sd1"), methods=["rectifiedhr"], width=256, height=256, steps=4, repeats=1,
                          warmup=0)
    rows = {m["method"]: m for m in rec["methods"]}
    assert set(rows) == {"direct", "rectifiedhr"} and not rec["skipped"]
    # one call per step per image (two with CFG), as direct: the phases only change the canvas (the
    # tiny SD 1.x runs PNDM, whose schedule holds one entry more than its steps: the last phase runs it)
    assert rows["rectifiedhr"]["network_calls"] == rows["direct"]["network_calls"]

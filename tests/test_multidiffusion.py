"""`multidiffusion`: parity with diffusers' panorama pipeline, reduction to `direct`, every family,
full coverage, determinism and bad inputs."""

import math
import random

import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.models import adapt
from anysize.sampling import sample
from anysize.tiling_grids import fusion_weights, overlap_origins, uncovered

from _tiling_helpers import FakeAdapter, fake_cond, generate_latents, spy_windows

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]


def gen(adapter, method="multidiffusion", **kw):
    return generate_latents(adapter, method, **kw)


@pytest.fixture(scope="module")
def panorama(tiny):
    """diffusers' StableDiffusionPanoramaPipeline on the tiny SD components, DDIM (clip_sample off, as
    in SD 1.5's own scheduler config), its window shrunk from 64 to the tiny model's native 16."""
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    pipe = tiny("sd1")
    keep = ("vae", "text_encoder", "tokenizer", "unet", "safety_checker", "feature_extractor", "image_encoder")
    comps = {k: v for k, v in pipe.components.items() if k in keep}
    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pano = StableDiffusionPanoramaPipeline(**comps, scheduler=sched, requires_safety_checker=False)
    pano.set_progress_bar_config(disable=True)
    views = type(pano).get_views
    pano.get_views = lambda h, w, window_size=64, stride=8, circular_padding=False: views(
        pano, h, w, window_size=16, stride=8, circular_padding=circular_padding)
    return pano


@pytest.mark.parametrize("h,w,circular,view_batch", [(192, 256, False, 1), (192, 256, False, 4), (128, 320, True, 3)])
def test_equals_diffusers_panorama_pipeline(panorama, h, w, circular, view_batch):
    ref = panorama("a red circle", height=h, width=w, num_inference_steps=3, guidance_scale=7.5,
                   generator=torch.Generator().manual_seed(5), output_type="latent",
                   circular_padding=circular, view_batch_size=view_batch).images
    ours = gen(adapt(panorama), h=h, w=w, steps=3, seed=5, prompt="a red circle",
               stride=8, circular=circular, view_batch_size=view_batch)
    assert ours.latents.shape == ref.shape
    assert (ours.latents - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_native_size_equals_direct(tiny, family):
    adapter = adapt(tiny(family), native_size=16)
    direct = gen(adapter, "direct")
    for weighting in ("uniform", "gaussian"):
        ours = gen(adapter, weighting=weighting, stride=8)
        assert (ours.latents - direct.latents).abs().max().item() <= 1e-6
        assert ours.network_calls == direct.network_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_at_non_native_non_square_size(tiny, family):
    adapter = adapt(tiny(family), native_size=16)
    h, w = 192, 256  # latent 24 x 32: window 16, stride 8 -> rows [0, 8], cols [0, 8, 16]
    done = []
    with spy_windows(adapter) as seen:
        res = gen(adapter, h=h, w=w, steps=2, stride=8, weighting="gaussian", view_batch_size=4, callback=done.append)
    assert res.latents.shape[-2:] == (24, 32) and torch.isfinite(res.latents).all()
    cfg = 2 if adapter.pipe.__class__.__name__ != "FluxPipeline" else 1
    steps = len(done)  # PNDM runs one more step than asked
    assert res.network_calls == 6 * cfg * steps
    windows = [w for _, win, _ in seen for w in (win if isinstance(win, list) else [win])]
    places = {(w.top, w.left) for w in windows}
    if family in ("sd1", "sd2", "sdxl"):  # U-Nets: windows batched (4 per call)
        assert max(n for _, _, n in seen) == 4 * cfg
    if family != "sd1" and family != "sd2":  # each window conditioned on its true position (SDXL: per sample)
        assert places == {(r, c) for r in (0, 8) for c in (0, 8, 16)}
        assert all(w.canvas == (24, 32) and (w.height, w.width) == (16, 16) for w in windows)
    direct = gen(adapter, "direct", h=h, w=w, steps=2)
    assert (res.latents - direct.latents).abs().max().item() > 1e-3


def test_overlap_origins_cover_every_pixel():
    rng = random.Random(0)
    for _ in range(2000):
        window = rng.randint(1, 40)
        length = rng.randint(window, 200)
        stride = rng.randint(1, window)
        o = overlap_origins(length, window, stride)
        assert uncovered(length, window, o) == []
        assert o == sorted(set(o)) and o[0] == 0 and o[-1] == length - window
        assert len(o) == (length - window) // stride + 1 + ((length - window) % stride != 0)
        c = overlap_origins(length, window, stride, circular=True)
        covered = {(s + k) % length for s in c for k in range(window)}
        assert len(covered) == length
    # the diffusers grid where it is complete
    assert overlap_origins(32, 16, 8) == [0, 8, 16]
    assert overlap_origins(30, 16, 8) == [0, 8, 14]  # diffusers: [0, 8], leaving 6 columns at 0
    assert overlap_origins(40, 16, 8, circular=True) == [0, 8, 16, 24, 32]


def test_full_coverage_where_diffusers_leaves_zeros():
    adapter = FakeAdapter(native=16)
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(2)
    x = torch.randn(1, 4, 16, 30, generator=torch.Generator().manual_seed(0))
    m = anysize.methods.create("multidiffusion", stride=8)
    out = sample(m, adapter, x, fake_cond(1, True), sched, sched.timesteps, progress=False)
    assert (out[..., -6:].abs() > 1e-3).all()


def test_gaussian_weights():
    g = fusion_weights(64, 64, "gaussian")
    assert abs(g.max().item() - 3.99 ** 2) < 0.1 * 3.99 ** 2
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.flip(1))
    assert g[0, 0] / g.max() < 1e-9
    assert torch.equal(fusion_weights(8, 8, "uniform"), torch.ones(8, 8))
    assert torch.equal(fusion_weights(4, 6, "gaussian", single_row=True, single_col=True), torch.ones(4, 6))


@pytest.mark.parametrize(
    "opts,size,match",
    [
        ({"stride": 0}, (128, 256), "stride"),
        ({"stride": -8}, (128, 256), "stride"),
        ({"window": 16, "stride": 24}, (128, 256), "larger than the window"),
        ({"window": 24}, (128, 256), "larger than the 16x32 latent canvas"),
        ({"weighting": "cosine"}, (128, 256), "gaussian, uniform"),
        ({"view_batch_size": 0}, (128, 256), "view_batch_size"),
        ({"circular": "yes"}, (128, 256), "circular"),
        ({"windows": 16}, (128, 256), "options: circular, stride, view_batch_size, weighting, window"),
    ],
)
def test_bad_inputs(tiny, opts, size, match):
    adapter = adapt(tiny("sd1"), native_size=16)
    with pytest.raises(InvalidArgumentError, match=match):
        anysize.generate(adapter, "a cat", height=size[0], width=size[1], steps=1, method="multidiffusion",
                         method_options=opts, output_type="latent", progress=False)


def test_dit_stride_must_be_patch_multiple(tiny):
    adapter = adapt(tiny("sd3"), native_size=16)
    with pytest.raises(InvalidArgumentError, match="multiple of 2"):
        gen(adapter, h=128, w=256, stride=7)


def test_calls_per_step_fake_adapter():
    from diffusers import DDIMScheduler

    rng = random.Random(1)
    for _ in range(20):
        h, w = rng.randint(16, 60), rng.randint(16, 60)
        stride = rng.randint(1, 16)
        adapter = FakeAdapter(native=16)
        sched = DDIMScheduler(clip_sample=False)
        sched.set_timesteps(2)
        x = torch.randn(2, 4, h, w)
        m = anysize.methods.create("multidiffusion", stride=stride, view_batch_size=rng.randint(1, 5))
        out = sample(m, adapter, x, fake_cond(2, True), sched, sched.timesteps, progress=False)
        n = ((h - 16) // stride + 1 + ((h - 16) % stride != 0)) * ((w - 16) // stride + 1 + ((w - 16) % stride != 0))
        assert adapter.calls == n * 2 * 2 * 2  # windows x images x CFG x steps
        assert math.isfinite(out.sum().item())


def test_default_window_and_stride():
    m = anysize.methods.create("multidiffusion")
    assert m.geometry(FakeAdapter(native=64), 64, 200) == ((64, 64), (8, 8))  # window native, stride window/8
    assert m.geometry(FakeAdapter(native=64), 40, 200) == ((40, 64), (5, 8))  # shrunk to a short canvas side
    assert m.geometry(FakeAdapter(native=16, patch=2), 16, 40) == ((16, 16), (2, 2))
    assert anysize.methods.create("multidiffusion", window=32, stride=8).geometry(FakeAdapter(64), 64, 64) == ((32, 32), (8, 8))


def test_circular_panoramas_decode_around_the_seam(tiny):
    """A 360° canvas decodes as a loop: rolling the latents rolls the image, borders included."""
    from anysize.models import adapt

    adapter = adapt(tiny("sd1"))
    z = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0))

    def roll_error(wrap):
        a = adapter.decode(z, tiled=False, wrap=wrap)
        b = adapter.decode(torch.roll(z, 10, -1), tiled=False, wrap=wrap)
        assert a.shape == (1, 3, 128, 256)
        return (torch.roll(a, 80, -1) - b).abs().max().item()

    plain, wrapped = roll_error(False), roll_error(True)
    assert wrapped < 0.2 * plain  # only GroupNorm statistics differ slightly; the zero-padded borders are gone
    assert torch.equal(adapter.decode(z, tiled=False), adapter.decode(z, tiled=False, wrap=False))


def test_generate_decodes_circular_runs_with_wrap(tiny, monkeypatch):
    import anysize
    from anysize.models import adapt

    adapter = adapt(tiny("sd1"))
    seen = []
    real = type(adapter).decode

    def spy(self, latents, **kw):
        seen.append(kw.get("wrap", False))
        return real(self, latents, **kw)

    monkeypatch.setattr(type(adapter), "decode", spy)
    for method, options, wrap in [
        ("multidiffusion", {"circular": True}, True),
        ("multidiffusion", {}, False),
        ("hidiffusion", {"inner": "multidiffusion"}, False),
        ("direct", {}, False),
    ]:
        seen.clear()
        anysize.generate(adapter, "a cat", width=256, height=128, steps=1, method=method, method_options=options,
                         progress=False, output_type="np")
        assert seen[0] is wrap, method  # the first (outer) decode call; a wrapped one decodes the padded canvas


@pytest.mark.parametrize("method,options", [("multidiffusion", {"stride": 8}), ("fstd", {})])
def test_sdxl_windows_at_different_places_share_calls(tiny, method, options):
    """Each window keeps its own crop coordinates in its time ids, so batching changes nothing but the call count."""
    import anysize
    from anysize.models import adapt

    adapter = adapt(tiny("sdxl"))
    unet = adapter.network
    forwards = []
    handle = unet.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        outs = {}
        for batch in (1, 4):
            forwards.clear()
            key = "view_batch_size" if method == "multidiffusion" else "tile_batch_size"
            outs[batch] = (anysize.generate(adapter, "a cat", width=256, height=192, steps=2, seed=1, method=method,
                                            method_options={**options, key: batch}, progress=False,
                                            output_type="latent").images, len(forwards))
    finally:
        handle.remove()
    (one, calls_one), (four, calls_four) = outs[1], outs[4]
    assert (one - four).abs().max() <= 1e-4  # float rounding of batched matmuls (latents up to ~6)
    assert calls_four < calls_one


def test_per_sample_windows_only_where_the_network_takes_them(tiny):
    from anysize.errors import InvalidArgumentError
    from anysize.models import Window, adapt

    sd3 = adapt(tiny("sd3"))
    cond = sd3.encode_prompt(["a", "b"], None, guidance_scale=1.0)
    x = torch.zeros(2, sd3.latent_channels, 16, 16)
    windows = [Window(0, 0, 16, 16, (16, 32)), Window(0, 16, 16, 16, (16, 32))]
    with pytest.raises(InvalidArgumentError, match="one window per call"):
        sd3.predict(x, torch.tensor(999.0), cond.positive, windows)
    sdxl = adapt(tiny("sdxl"))
    ids = sdxl.time_ids(windows, 2, torch.float32)
    assert ids[:, 3].tolist() == [0, 128] and ids[:, 0].tolist() == [128, 128]
    with pytest.raises(InvalidArgumentError, match="3 windows for a batch of 2"):
        sdxl.predict(torch.zeros(2, 4, 16, 16), torch.tensor(999), sdxl.encode_prompt(["a", "b"], None, guidance_scale=1.0).positive,
                     windows + windows[:1])

"""`fstd`: tile placement, the call-count invariant, zero offsets = plain tiling, reduction to `direct`,
every family, determinism, ε conversions and bad inputs."""

import math
import random

import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.models import adapt
from anysize.models.base import Window
from anysize.sampling import StepContext, sample
from anysize.tiling_grids import shifted_origins, uncovered

from _tiling_helpers import FakeAdapter, fake_cond, generate_latents, spy_windows

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]


def gen(adapter, method="fstd", **kw):
    return generate_latents(adapter, method, **kw)


@pytest.fixture(scope="module")
def ddim_sd1(tiny):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = tiny("sd1")
    comps = dict(pipe.components)
    comps["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    ddim = StableDiffusionPipeline(**comps)
    ddim.set_progress_bar_config(disable=True)
    return adapt(ddim, native_size=16)


# ------------------------------------------------------------------------------------- placement


def test_placement_count_coverage_and_duplicates():
    rng = random.Random(0)
    for _ in range(20000):
        tile = rng.randint(1, 64)
        length = rng.randint(tile, 400)
        d = rng.randint(0, tile - 1)
        n = math.ceil(length / tile)
        rem = length - (n - 1) * tile
        asd = shifted_origins(length, tile, d, "asd")
        imp = shifted_origins(length, tile, d, "improved")
        assert len(asd) == len(imp) == n
        assert all(0 <= o <= length - tile for o in asd + imp)
        # official: leading strip [0, min(d, L - T)) uncovered when n >= 2, far border always covered
        assert uncovered(length, tile, asd) == (list(range(min(d, length - tile))) if n >= 2 else [])
        # improved: no duplicate, at most double coverage, stale strip only when d < rem
        assert len(set(imp)) == n
        cover = [0] * length
        for o in imp:
            for k in range(o, o + tile):
                cover[k] += 1
        assert max(cover) <= 2
        assert uncovered(length, tile, imp) == (list(range(d)) if n >= 2 and d < rem else [])
        if d == 0:
            assert imp == asd
    assert shifted_origins(200, 64, 15, "asd") == [15, 79, 136, 136]  # the spec's duplicate example
    assert shifted_origins(200, 64, 15) == [0, 15, 79, 136]


# ---------------------------------------------------------------------------- call-count invariant


@pytest.mark.parametrize("patch", [1, 2])
def test_calls_per_step_is_non_overlapping_tile_count(patch):
    from diffusers import DDIMScheduler

    rng = random.Random(patch)
    for _ in range(40):
        tile = 16
        h = rng.randint(tile // patch, 90 // patch) * patch
        w = rng.randint(tile // patch, 90 // patch) * patch
        adapter = FakeAdapter(native=tile, patch=patch)
        sched = DDIMScheduler(clip_sample=False)
        steps = rng.randint(2, 7)
        sched.set_timesteps(steps)
        batch, cfg = rng.randint(1, 2), rng.random() < 0.5
        m = anysize.methods.create("fstd", offset_range=rng.randint(0, tile), tile_batch_size=rng.randint(1, 9),
                                   placement=rng.choice(["asd", "improved"]))
        per_step = []
        prev = [0]

        def count(info):
            per_step.append(adapter.calls - prev[0])
            prev[0] = adapter.calls

        x = torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(0))
        with spy_windows(adapter) as seen:
            out = sample(m, adapter, x, fake_cond(batch, cfg), sched, sched.timesteps, progress=False,
                         seeds=[9 + i for i in range(batch)], generator=torch.Generator().manual_seed(9), callback=count)
        n = math.ceil(h / tile) * math.ceil(w / tile)
        assert per_step == [n * batch * (2 if cfg else 1)] * steps, (h, w)
        assert torch.isfinite(out).all()
        assert all(win.top % patch == 0 and win.left % patch == 0 for _, win, _ in seen)
        # the first and the last step use the unshifted grid
        for t in (sched.timesteps[0], sched.timesteps[-1]):
            wins = {(win.top, win.left) for tt, win, _ in seen if tt == float(t)}
            rows = shifted_origins(h, tile, 0)
            cols = shifted_origins(w, tile, 0)
            assert wins == {(r, c) for r in rows for c in cols}


def test_grid_moves_between_steps():
    from diffusers import DDIMScheduler

    adapter = FakeAdapter(native=16)
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(8)
    x = torch.randn(1, 4, 40, 56)
    with spy_windows(adapter) as seen:
        sample(anysize.methods.create("fstd"), adapter, x, fake_cond(1, False), sched, sched.timesteps,
               progress=False, seeds=[0], generator=torch.Generator().manual_seed(0))
    by_step = {}
    for t, win, _ in seen:
        by_step.setdefault(t, set()).add((win.top, win.left))
    grids = list(by_step.values())
    assert len(grids) == 8
    assert len({frozenset(g) for g in grids}) > 2  # shifted on non-reset steps
    assert grids[0] == grids[4] == grids[7]  # reset period 4 and the final step
    assert all(len(g) == 3 * 4 for g in grids)


# ---------------------------------------------------------------- zero offsets = plain tiling


def plain_tiling(adapter, prompt, h, w, steps, seed, tile):
    """Independent reference: non-overlapping tiles, each its own network call, one DDIM step."""
    from anysize.schedulers import make_scheduler

    cond = adapter.encode_prompt([prompt], None, guidance_scale=adapter.default_guidance)
    sched = make_scheduler(adapter)
    lh, lw = h // 8, w // 8
    timesteps = adapter.set_timesteps(sched, steps, (lh, lw))
    x = adapter.initial_noise((1, 4, lh, lw), [torch.Generator().manual_seed(seed)]) * sched.init_noise_sigma
    with torch.no_grad():
        for t in timesteps:
            out = torch.zeros_like(x)
            for r in range(0, lh, tile):
                for c in range(0, lw, tile):
                    out[..., r : r + tile, c : c + tile] = adapter.predict_guided(
                        x[..., r : r + tile, c : c + tile], t, cond, Window(r, c, tile, tile, (lh, lw)))
            x = sched.step(out, t, x, eta=0.0, return_dict=False)[0]
    return x


def test_zero_offsets_equal_plain_non_overlapping_tiling(ddim_sd1):
    ref = plain_tiling(ddim_sd1, "a cat", 256, 384, 3, 7, 16)
    # one tile per call and uniform weights, as the reference: equal
    for opts in ({"offset_range": 0}, {"reset_every": 1, "zero_final_shift": False}):
        ours = gen(ddim_sd1, h=256, w=384, steps=3, seed=7, tile_batch_size=1, weighting="uniform", **opts)
        assert (ours.latents - ref).abs().max().item() <= 1e-6
    # Gaussian weights (out·G/G rounds) and batched tiles (batched convolutions round differently)
    ours = gen(ddim_sd1, h=256, w=384, steps=3, seed=7, offset_range=0)
    assert (ours.latents - ref).abs().max().item() <= 1e-4
    shifted = gen(ddim_sd1, h=256, w=384, steps=3, seed=7)
    assert (shifted.latents - ref).abs().max().item() > 1e-3


# ------------------------------------------------------------------------------ model families


@pytest.mark.parametrize("family", FAMILIES)
def test_native_size_equals_direct(tiny, family):
    adapter = adapt(tiny(family), native_size=16)
    direct = gen(adapter, "direct", steps=3)
    for placement in ("improved", "asd"):
        ours = gen(adapter, steps=3, placement=placement)
        assert (ours.latents - direct.latents).abs().max().item() <= 1e-6
        assert ours.network_calls == direct.network_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_at_non_native_non_square_size(tiny, family):
    adapter = adapt(tiny(family), native_size=16)
    h, w = 208, 272  # latent 26 x 34: 2 x 3 tiles of 16, neither side a multiple of the tile
    done = []
    with spy_windows(adapter) as seen:
        res = gen(adapter, h=h, w=w, steps=5, callback=done.append)
    assert res.latents.shape[-2:] == (26, 34) and torch.isfinite(res.latents).all()
    cfg = 1 if family == "flux" else 2
    assert res.network_calls == 2 * 3 * cfg * len(done)
    windows = [w for _, win, _ in seen for w in (win if isinstance(win, list) else [win])]  # SDXL: per sample
    places = [(w.top, w.left) for w in windows]
    assert all(w.canvas == (26, 34) and (w.height, w.width) == (16, 16) for w in windows)
    if family in ("sd3", "flux"):
        assert all(r % 2 == 0 and c % 2 == 0 for r, c in places)
    assert any(r not in (0, 10) or c not in (0, 16, 18) for r, c in places)  # shifted at some step
    direct = gen(adapter, "direct", h=h, w=w, steps=5)
    assert (res.latents - direct.latents).abs().max().item() > 1e-3


def test_offsets_depend_on_the_seed(ddim_sd1):
    grids = []
    for seed in (1, 2):
        with spy_windows(ddim_sd1) as seen:
            gen(ddim_sd1, h=208, w=272, steps=4, seed=seed)
        grids.append([(t, w.top, w.left) for t, w, _ in seen])
    assert grids[0] != grids[1]


# ----------------------------------------------------------------------------- ε conversions


@pytest.mark.parametrize("scheduler,ptype", [("DDIMScheduler", "epsilon"), ("DDIMScheduler", "v_prediction"),
                                             ("EulerDiscreteScheduler", "epsilon"),
                                             ("EulerDiscreteScheduler", "v_prediction"),
                                             ("FlowMatchEulerDiscreteScheduler", "flow")])
def test_eps_round_trip(scheduler, ptype):
    import diffusers

    from anysize.noise import NoiseSpace

    cls = getattr(diffusers, scheduler)
    sched = cls() if ptype == "flow" else cls(prediction_type=ptype)
    sched.set_timesteps(10)
    ns, t = NoiseSpace.of(sched), sched.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    out = ns.output_from_noise(x, eps, t, ptype)
    assert torch.allclose(ns.noise_from_output(x, out, t, ptype), eps, atol=1e-8)
    if ptype == "epsilon":
        assert torch.equal(out, eps)


def test_stale_strip_gets_previous_eps(monkeypatch):
    """Pixels no tile covers this step are stepped with the previous step's fused ε."""
    from diffusers import DDIMScheduler

    adapter = FakeAdapter(native=16)
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(4)
    x = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    m = anysize.methods.create("fstd")
    state = {}
    cond = fake_cond(1, False)
    x1 = m.step(StepContext(adapter, sched, cond, sched.timesteps, 0, None, state, image_seeds=(0,)), x)
    eps0 = state["fstd_eps_ref"].clone()
    monkeypatch.setattr(m, "offsets", lambda ctx, b, r: [(4, 6)])
    with spy_windows(adapter) as seen:
        x2 = m.step(StepContext(adapter, sched, cond, sched.timesteps, 1, None, state, image_seeds=(0,)), x1)
    # L = 40, T = 16: 3 tiles, remainder 8 > offsets, so rows [0, 4) and columns [0, 6) are uncovered
    assert {(w.top, w.left) for _, w, _ in seen} == {(r, c) for r in (4, 20, 24) for c in (6, 22, 24)}
    ref = DDIMScheduler(clip_sample=False)
    ref.set_timesteps(4)
    expect = ref.step(eps0, sched.timesteps[1], x1, eta=0.0).prev_sample
    stale = torch.zeros(40, 40, dtype=torch.bool)
    stale[:4, :] = True
    stale[:, :6] = True
    assert torch.allclose(x2[..., stale], expect[..., stale], atol=1e-6)
    assert not torch.allclose(x2[..., ~stale], expect[..., ~stale], atol=1e-3)


# ---------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"tile": 24}, "larger than the 16x32 latent canvas"),
        ({"tile": 0}, "tile"),
        ({"offset_range": 17}, "larger than the tile"),
        ({"offset_range": -1}, "offset_range"),
        ({"tile": 8, "offset_range": 9}, "larger than the tile"),
        ({"reset_every": 0}, "reset_every"),
        ({"placement": "random"}, "asd, improved"),
        ({"weighting": "box"}, "gaussian, uniform"),
        ({"tile_batch_size": 0}, "tile_batch_size"),
        ({"zero_final_shift": 1}, "zero_final_shift"),
        ({"overlap": 32}, "offset_range"),
    ],
)
def test_bad_inputs(tiny, opts, match):
    adapter = adapt(tiny("sd1"), native_size=16)
    with pytest.raises(InvalidArgumentError, match=match):
        gen(adapter, h=128, w=256, steps=1, **opts)


def test_dit_tile_must_be_patch_multiple(tiny):
    adapter = adapt(tiny("flux"), native_size=16)
    with pytest.raises(InvalidArgumentError, match="multiple of 2"):
        gen(adapter, h=128, w=256, tile=15)

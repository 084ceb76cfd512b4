"""`demofusion`: reduction to `direct`, network calls per phase, determinism, any size and ratio,
bad options, and each deliberate difference from the official code listed in its docstring.

Its agreement with the official pipeline itself (phase by phase, pinned randomness) is measured by
``benchmarks/demofusion_fidelity``, which needs a copy of the official file.
"""

import math
import random

import pytest
import torch

import anysize
from anysize import methods
from anysize.errors import InvalidArgumentError
from anysize.methods import demofusion as df
from anysize.models import adapt
from anysize.sampling import StepContext
from anysize.tiling_grids import overlap_origins

from _tiling_helpers import generate_latents, spy_windows

UNETS = ["sd1", "sd2", "sdxl"]
DITS = ["sd3", "flux"]
STEPS = 2


@pytest.fixture(scope="module")
def adapters(tiny):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = adapt(tiny(family), native_size=16)
        return cache[family]

    return get


def gen(adapter, method="demofusion", **kw):
    kw.setdefault("steps", STEPS)
    return generate_latents(adapter, method, **kw)


@pytest.mark.parametrize("family", UNETS + DITS)
def test_native_size_and_below_is_direct(adapters, family):
    adapter = adapters(family)
    for h, w in ((128, 128), (96, 128)):
        direct = gen(adapter, "direct", h=h, w=w)
        ours = gen(adapter, h=h, w=w)
        assert (ours.latents - direct.latents).abs().max().item() <= 1e-6
        assert ours.network_calls == direct.network_calls


def calls_per_step(adapter, **kw):
    """(stage, network invocations, samples) of every step of one run."""
    steps = []
    with spy_windows(adapter) as seen:
        def record(info):
            steps.append((info.stage, len(seen), sum(n for _, _, n in seen)))

        gen(adapter, callback=record, **kw)
    out, before = [], (0, 0)
    for stage, calls, samples in steps:
        out.append((stage, calls - before[0], samples - before[1]))
        before = (calls, samples)
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_network_calls_per_phase(adapters, family):
    adapter = adapters(family)
    # 3x the side: latent 16 -> 32 -> 48; views 16, stride 8: 3x3 then 5x5 local, 2x2 then 3x3 dilated
    steps = calls_per_step(adapter, h=384, w=384)
    cfg = 2
    # (invocations, samples) per step, 16 views per call: phase 3's 25 local views take two
    ones = {"phase 1/3": (1, cfg), "phase 2/3": (2, (9 + 4) * cfg), "phase 3/3": (3, (25 + 9) * cfg)}
    runs = 3 if family == "sd1" else STEPS  # PNDM runs one more step than asked
    assert [s for s in steps] == [(stage, *ones[stage]) for stage in ("phase 1/3", "phase 2/3", "phase 3/3") for _ in range(runs)]
    # four views per call: local ceil(9/4) + dilated 1 calls in phase 2, ceil(25/4) + ceil(9/4) in phase 3
    steps = calls_per_step(adapter, h=384, w=384, view_batch_size=4)
    assert {(stage, calls) for stage, calls, _ in steps} == {("phase 1/3", 1), ("phase 2/3", 3 + 1), ("phase 3/3", 7 + 3)}


def test_batch_equals_alone_and_runs_repeat(adapters):
    adapter = adapters("sdxl")
    rng = torch.random.get_rng_state(), random.getstate()

    def run(prompt, seed):
        return anysize.generate(adapter, prompt, height=256, width=256, steps=STEPS, seed=seed,
                                method="demofusion", output_type="latent", progress=False).latents

    batch = run(["a red circle", "a blue square"], [5, 9])
    assert torch.equal(batch, run(["a red circle", "a blue square"], [5, 9]))
    assert torch.equal(torch.random.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    for i, (prompt, seed) in enumerate((("a red circle", 5), ("a blue square", 9))):
        assert (batch[i] - run(prompt, seed)[0]).abs().max().item() <= 1e-4
    assert (run("a red circle", 6)[0] - batch[0]).abs().max().item() > 1e-2


@pytest.mark.parametrize("h,w,sizes", [
    (128, 256, [(8, 16), (16, 32)]),  # 2:1
    (384, 384, [(16, 16), (32, 32), (48, 48)]),  # 3x the side
    (200, 312, [(10, 16), (25, 39)]),  # not powers of two: 2.44x rounds to two phases
    (200, 440, [(7, 16), (15, 32), (25, 55)]),  # 3.44x: three, the last dilated by ceil(3.44) = 4
])
def test_any_size_and_ratio(adapters, h, w, sizes):
    adapter = adapters("sd1")
    method = methods.create("demofusion")
    assert method.phase_sizes(adapter, h // 8, w // 8) == sizes
    shapes = []
    predict = adapter.predict
    adapter.predict = lambda x, *a, **k: shapes.append(tuple(x.shape[-2:])) or predict(x, *a, **k)
    try:
        res = gen(adapter, h=h, w=w, steps=1)
    finally:
        del adapter.predict
    assert res.latents.shape[-2:] == (h // 8, w // 8) and torch.isfinite(res.latents).all()
    # no view above the native size: a non-integer last phase dilates by ceil(scale)
    assert all(a <= 16 and b <= 16 for a, b in shapes)
    dilations = [method.dilation(adapter, s) for s in sizes[1:]]
    assert dilations == {(8, 16): [2], (16, 16): [2, 3], (10, 16): [3], (7, 16): [2, 4]}[sizes[0]]
    last = sizes[-1]
    grid = tuple(-(-n // dilations[-1]) for n in last)  # the dilated views of the last phase
    assert grid in shapes


def test_phase_results_keep_phase_ones_statistics(adapters, monkeypatch):
    adapter = adapters("sdxl")
    starts = []
    phase = df.DemoFusion.phase
    monkeypatch.setattr(df.DemoFusion, "phase", lambda self, r, z, *a, **k: starts.append(z) or phase(self, r, z, *a, **k))
    final = gen(adapter, h=384, w=384, prompt=["a", "b"], seed=[1, 2]).latents
    first, dims = starts[0], (1, 2, 3)
    for z in starts[1:] + [final]:  # each phase's result is renormalised per image to phase 1's mean and std
        assert torch.allclose(z.mean(dims), first.mean(dims), atol=1e-5)
        assert torch.allclose(z.std(dims), first.std(dims), atol=1e-5)


def test_bad_options_and_families(adapters, tiny):
    for options, words in (({"cosine_scale_1": -1}, "cosine_scale_1 must be a number >= 0"),
                           ({"sigma": 0}, "sigma must be a number > 0"),
                           ({"view_batch_size": 0}, "view_batch_size must be an integer >= 1"),
                           ({"progression": "geometric"}, "linear, doubling"),
                           ({"windows": 3}, "has no option windows")):
        with pytest.raises(InvalidArgumentError) as e:
            methods.create("demofusion", **options)
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InvalidArgumentError, match="stride 32 is larger than the local view"):
        gen(adapters("sd1"), h=256, w=256, stride=32)
    with pytest.raises(InvalidArgumentError, match=r"stride 7 must be a multiple of 2 latent pixels for flux \(its token grid\)$"):
        gen(adapters("flux"), h=256, w=256, stride=7)
    assert gen(adapters("sd1"), h=256, w=256, stride=7, steps=1).latents.isfinite().all()  # any stride on a U-Net


def test_defaults_are_the_officials(adapters):
    o = methods.create("demofusion").options
    assert (o.cosine_scale_1, o.cosine_scale_2, o.cosine_scale_3, o.sigma, o.view_batch_size) == (3.0, 1.0, 1.0, 0.8, 16)
    assert o.jitter and o.progression == "linear"
    # stride: half the window (official 64 for a 128 window), jitter range (window - stride) // 4
    assert methods.create("demofusion").views(adapters("sd1"), 32, 40) == ((16, 16), (8, 8), (2, 2))
    assert methods.create("demofusion", jitter=False).views(adapters("sd1"), 32, 40)[2] == (0, 0)
    # a short side below the window: the view shrinks to it and does not move along it
    assert methods.create("demofusion").views(adapters("sd1"), 12, 40) == ((12, 16), (6, 8), (1, 2))


def test_doubling_progression(adapters):
    adapter = adapters("sd1")
    assert methods.create("demofusion").phase_sizes(adapter, 64, 64) == [(16, 16), (32, 32), (48, 48), (64, 64)]
    doubling = methods.create("demofusion", progression="doubling")
    assert doubling.phase_sizes(adapter, 64, 64) == [(16, 16), (32, 32), (64, 64)]
    assert [doubling.dilation(adapter, s) for s in ((32, 32), (64, 64))] == [2, 4]


def test_jitter_moves_border_views_outward_only():
    g = torch.Generator().manual_seed(0)
    first = {df.axis_jitter(g, 0, 16, 40, 2) for _ in range(200)}
    middle = {df.axis_jitter(g, 8, 24, 40, 2) for _ in range(200)}
    last = {df.axis_jitter(g, 24, 40, 40, 2) for _ in range(200)}
    assert (first, middle, last) == ({-2, -1, 0}, {-2, -1, 0, 1, 2}, {0, 1, 2})
    state = g.get_state()
    assert df.axis_jitter(g, 0, 16, 16, 2) == 0 and torch.equal(g.get_state(), state)  # no draw


def test_jitter_in_patch_units_on_a_dit():
    g = torch.Generator().manual_seed(0)
    first = {df.axis_jitter(g, 0, 16, 40, 4, 2) for _ in range(200)}
    middle = {df.axis_jitter(g, 8, 24, 40, 4, 2) for _ in range(200)}
    last = {df.axis_jitter(g, 24, 40, 40, 4, 2) for _ in range(200)}
    assert (first, middle, last) == ({-4, -2, 0}, {-4, -2, 0, 2, 4}, {0, 2, 4})
    state = g.get_state()
    assert df.axis_jitter(g, 8, 24, 40, 1, 2) == 0 and torch.equal(g.get_state(), state)  # under a patch: no draw


@pytest.mark.parametrize("family", DITS)
@pytest.mark.parametrize("h,w", [(256, 256), (208, 320), (384, 256)])  # 2x; 26x40 latent (2.5x, odd halves); 3x by 2x
def test_dit_views_sit_on_the_token_grid(adapters, family, h, w):
    adapter = adapters(family)
    method = methods.create("demofusion")
    sizes = method.phase_sizes(adapter, h // 8, w // 8)
    steps, shapes = [], []
    predict = adapter.predict

    def record(x, t, embeds, window=None, **k):
        shapes.append((tuple(x.shape[-2:]), window))
        return predict(x, t, embeds, window, **k)

    adapter.predict = record
    try:
        res = gen(adapter, h=h, w=w, callback=lambda info: steps.append((info.stage, len(shapes))))
    finally:
        del adapter.predict
    assert res.latents.shape[-2:] == (h // 8, w // 8) and torch.isfinite(res.latents).all()
    windows = [x for _, win in shapes for x in (win if isinstance(win, list) else [win]) if x is not None]
    assert windows and all(v % 2 == 0 for x in windows for v in (x.top, x.left, x.height, x.width, *x.canvas))
    assert all(a % 2 == 0 and b % 2 == 0 and a <= 16 and b <= 16 for (a, b), _ in shapes)
    # the jitter moves views off the plain grid, in whole tokens (the positions above are all even)
    moved = False
    for size in sizes[1:]:
        (th, tw), (sh, sw), (jh, jw) = method.views(adapter, *size)
        assert jh % 2 == 0 and jw % 2 == 0 and (jh, jw) != (0, 0)
        plain = {(jh + r, jw + c) for r in overlap_origins(size[0], th, sh) for c in overlap_origins(size[1], tw, sw)}
        local = [x for x in windows if x.canvas == (size[0] + 2 * jh, size[1] + 2 * jw)]
        assert local
        moved |= any((x.top, x.left) not in plain for x in local)
    assert moved
    # network samples per step of each phase: (local views + s²), x2 with CFG (SD3; FLUX's guidance is embedded)
    cfg = 2 if family == "sd3" else 1
    with spy_windows(adapter) as seen:
        gen(adapter, h=h, w=w, steps=1, callback=lambda info: steps.append(("count", sum(n for _, _, n in seen))))
    counts = [n for stage, n in steps if stage == "count"]
    per_phase = [b - a for a, b in zip([0] + counts, counts)]
    expected = [cfg]
    for size in sizes[1:]:
        (th, tw), (sh, sw), _ = method.views(adapter, *size)
        local = len(overlap_origins(size[0], th, sh)) * len(overlap_origins(size[1], tw, sw))
        expected.append((local + method.dilation(adapter, size) ** 2) * cfg)
    assert per_phase == expected


def test_local_views_cover_the_canvas_and_jitter_without_it(adapters, monkeypatch):
    adapter = adapters("sdxl")
    with spy_windows(adapter) as seen:
        gen(adapter, h=256, w=320, steps=1)
    local = [w for _, win, _ in seen if isinstance(win, list) for w in win[: len(win) // 2]]
    assert local and all(w.canvas == (32 + 4, 40 + 4) for w in local)  # the 2-px jitter border
    places = {(2 + r, 2 + c) for r in overlap_origins(32, 16, 8) for c in overlap_origins(40, 16, 8)}
    moved = [min(abs(w.top - r) + abs(w.left - c) for r, c in places) for w in local]
    assert max(moved) > 0 and all(abs(w.top - r) <= 2 and abs(w.left - c) <= 2
                                  for w in local for r, c in [min(places, key=lambda p: abs(p[0] - w.top) + abs(p[1] - w.left))])
    with spy_windows(adapter) as seen:
        gen(adapter, h=256, w=320, steps=1, jitter=False)
    local = [w for _, win, _ in seen if isinstance(win, list) for w in win[: len(win) // 2]]
    assert {(w.top, w.left) for w in local} == {(r, c) for r in overlap_origins(32, 16, 8) for c in overlap_origins(40, 16, 8)}


def test_sdxl_views_are_conditioned_on_their_canvas(adapters):
    """anysize's window convention: local views as crops of the jitter-padded canvas, dilated views
    and phase 1 as whole images of their own size (official: the final size in every call)."""
    adapter = adapters("sdxl")
    with spy_windows(adapter) as seen:
        gen(adapter, h=256, w=256, steps=1)
    ids = []
    for _, window, n in seen:
        ids.append(adapter.time_ids(window if window is not None else df.Window.full(16, 16), n, torch.float32))
    rows = {tuple(int(v) for v in r) for t in ids for r in t}
    assert (128, 128, 0, 0, 128, 128) in rows  # phase 1 and the dilated views
    assert all(r[0] == r[1] == 36 * 8 and r[4] == r[5] == 128 for r in rows if r[0] != 128)


def test_gaussian_smoothing_keeps_each_images_statistics():
    x = torch.randn(2, 4, 12, 10) * torch.tensor([1.0, 3.0])[:, None, None, None]
    y = df.gaussian_smooth(x, 3, 0.8)
    dims = (1, 2, 3)
    assert torch.allclose(y.mean(dims), x.mean(dims), atol=1e-5) and torch.allclose(y.std(dims), x.std(dims), atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-2)
    assert torch.allclose(df.gaussian_smooth(x, 1, 0.8), x, atol=1e-5)  # s = 1: no smoothing


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DDIMScheduler"])
def test_fusing_outputs_equals_averaging_stepped_views(adapters, scheduler):
    """The official code steps every view and averages the stepped latents; stepping the fused
    output once is the same for Euler (its SDXL scheduler) and DDIM: the step is affine in the
    output at a fixed state."""
    import diffusers

    base = adapters("sdxl").scheduler
    x = torch.randn(1, 4, 8, 8)
    outs = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    c2 = 0.3

    def stepped(out, index):
        s = getattr(diffusers, scheduler).from_config(base.config, clip_sample=False)
        s.set_timesteps(4)
        for t in s.timesteps[:index]:  # walk the index there, as in a loop
            s.step(torch.zeros_like(x), t, x)
        ctx = StepContext(adapters("sdxl"), s, None, s.timesteps, index, None)
        return ctx.scheduler_step(out, x)

    for index in (0, 2):
        local = (outs[0] + outs[1]) / 2
        fused = stepped(local * (1 - c2) + outs[2] * c2, index)
        averaged = ((stepped(outs[0], index) + stepped(outs[1], index)) / 2) * (1 - c2) + stepped(outs[2], index) * c2
        assert (fused - averaged).abs().max().item() <= 1e-5


def test_view_batch_size_does_not_change_the_image(adapters):
    adapter = adapters("sdxl")  # Euler, whose input scaling the official code gets wrong past a step's first call
    one = gen(adapter, h=256, w=256, view_batch_size=1).latents
    many = gen(adapter, h=256, w=256, view_batch_size=16).latents
    assert (one - many).abs().max().item() <= 1e-5


def test_registered_with_lighter_demo_options(adapters):
    assert "demofusion" in methods.names()
    quick = methods.get("demofusion").demo_options(adapters("sd1"))
    assert quick == {"stride": 16}
    method = methods.create("demofusion", **quick)
    assert method.views(adapters("sd1"), 32, 32) == ((16, 16), (16, 16), (0, 0))


def _phase_ctx(adapter, index, shape=(1, 4, 24, 24)):
    scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
    timesteps = adapter.set_timesteps(scheduler, 4, (16, 16))
    for t in timesteps[:index]:  # walk Euler's step index there
        scheduler.step(torch.zeros(shape), t, torch.zeros(shape))
    g = torch.Generator().manual_seed(3)
    start, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    phase = df.Phase("phase 2/2", shape[-2:], 2, start, noise, [torch.Generator().manual_seed(1)])
    ctx = StepContext(adapter, scheduler, None, timesteps, index, None, extra=phase)
    return ctx, phase, torch.randn(shape, generator=g)


@pytest.mark.parametrize("index", [0, 2])
def test_skip_residual_and_mix_follow_the_cosine_schedules(adapters, monkeypatch, index):
    adapter = adapters("sdxl")
    ctx, phase, x = _phase_ctx(adapter, index)
    t = float(ctx.t)
    cf = 0.5 * (1 + math.cos(math.pi * (1000 - t) / 1000))
    method = methods.create("demofusion", cosine_scale_1=2.0, cosine_scale_2=0.5)
    local, dilated = torch.randn_like(x), torch.randn_like(x)
    monkeypatch.setattr(df.DemoFusion, "local_views", lambda self, c, x_in, p: local)
    monkeypatch.setattr(df.DemoFusion, "dilated_views", lambda self, c, x_in, s, std: dilated)
    c1, c2 = cf**2.0, cf**0.5
    mixed = x * (1 - c1) + adapter.from_x0(ctx.scheduler, phase.start, phase.noise, ctx.t) * c1
    want = ctx.scheduler_step(local * (1 - c2) + dilated * c2, mixed)
    ctx2, _, _ = _phase_ctx(adapter, index)
    assert (method.step(ctx2, x) - want).abs().max().item() <= 1e-6


def test_dilated_views_put_each_subgrid_back_in_place(adapters, monkeypatch):
    adapter = adapters("sd1")
    ctx, _, _ = _phase_ctx(adapters("sdxl"), 0)
    ctx.adapter = adapter
    monkeypatch.setattr(adapter, "predict_guided", lambda x, t, cond, window=None: x * 2, raising=False)
    monkeypatch.setattr(df, "select_cond", lambda cond, images: cond)
    x = torch.randn(2, 4, 23, 25)  # padded to 24 x 26 at the top/left for s = 2
    out = methods.create("demofusion", view_batch_size=3).dilated_views(ctx, x, 2, 0.5)
    padded = torch.nn.functional.pad(x, (1, 0, 1, 0))
    assert torch.allclose(out, 2 * df.gaussian_smooth(padded, 3, 0.5)[..., 1:, 1:], atol=1e-6)

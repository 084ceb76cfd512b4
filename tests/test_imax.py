"""`imax` (I-Max, FLUX): reduction to `direct`, network calls per stage, determinism, any size and
ratio, the official defaults, every deliberate difference of the method's docstring, its network
patch (reversible; NTK RoPE, proportional attention, text duplication) and its place in the CLI,
bench and eval. Numerical agreement with the official code is ``benchmarks/imax_fidelity``, which
needs a copy of the official files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import anysize
from anysize import methods
from anysize.errors import InvalidArgumentError
from anysize.methods import imax as im
from anysize.models import adapt
from anysize.patches.imax import (
    IMaxPatch, attention_factor, duplicate_text, duplication_grid, imax_frequencies, rotary_tables,
)

STEPS = 3


@pytest.fixture(scope="module")
def flux(tiny):
    return adapt(tiny("flux"), native_size=16)  # 128 px native, 8 x 8 tokens


def gen(adapter, method="imax", *, size=(128, 320), seed=5, steps=STEPS, options=None, **kw):
    h, w = size
    return anysize.generate(adapter, "a red circle" if "prompt" not in kw else kw.pop("prompt"), height=h, width=w,
                            method=method, steps=steps, seed=seed, method_options=options, output_type="latent",
                            progress=False, **kw)


def recording_stages():
    """A callback that keeps (stage, timestep, latent shape) of every step."""
    seen = []

    def callback(info):
        seen.append((info.stage, float(info.timestep), tuple(info.latents.shape[-2:])))

    return seen, callback


# ----------------------------------------------------------------------------- the method


@pytest.mark.parametrize("size", [(128, 128), (64, 128), (96, 96), (112, 144)])
def test_at_or_below_the_native_area_it_is_direct(flux, size):
    assert methods.create("imax").stage_sizes(flux, size[0] // 8, size[1] // 8) == [(size[0] // 8, size[1] // 8)]
    ours, plain = gen(flux, size=size), gen(flux, "direct", size=size)
    assert torch.equal(ours.latents, plain.latents)
    assert ours.network_calls == plain.network_calls == STEPS


def test_network_calls_per_stage_and_the_stage_sizes(flux):
    seen, callback = recording_stages()
    res = gen(flux, size=(128, 320), options={"steps_2": 2}, prompt=["a", "b"], seed=[1, 2], callback=callback)
    stages = [s for s, _, _ in seen]
    assert stages == ["native resolution"] * STEPS + ["high resolution"] * 2
    # 16 x 40 latent: s = √(640 / 256) ≈ 1.58, k = 2, so stage 1 is 8 x 20
    assert [hw for _, _, hw in seen] == [(8, 20)] * STEPS + [(16, 40)] * 2
    assert res.network_calls == 2 * (STEPS + 2)  # per image: steps in stage 1, steps_2 in stage 2
    assert res.latents.shape == (2, 16, 16, 40)


@pytest.mark.parametrize("latent,base", [
    ((32, 32), (16, 16)),  # 2x: k = 2
    ((24, 42), (12, 20)),  # s ≈ 1.98, k = 2; 21 rounded down to the 2-px token grid
    ((22, 22), (22, 22)),  # s = 1.375 rounds to k = 1: stage 1 at the target itself, as officially
    ((48, 48), (16, 16)),  # 3x
    ((16, 96), (8, 48)),  # 6:1, s ≈ 2.45: k = 2
    ((40, 40), (12, 12)),  # 2.5x: k = int(2.5 + 0.5) = 3, 40 // 3 = 13 rounded down to 12
])
def test_stage_sizes_follow_the_official_rule(flux, latent, base):
    h, w = latent
    k = int(math.sqrt(h * w / 256) + 0.5)
    expected = (max(2, h // k // 2 * 2), max(2, w // k // 2 * 2))
    assert methods.create("imax").stage_sizes(flux, h, w) == [expected, (h, w)]
    assert expected == base


def test_batch_equals_alone_and_runs_repeat(flux):
    batch = gen(flux, prompt=["a red circle", "a blue square"], seed=[5, 9]).latents
    assert torch.equal(batch, gen(flux, prompt=["a red circle", "a blue square"], seed=[5, 9]).latents)
    for i, (prompt, seed) in enumerate((("a red circle", 5), ("a blue square", 9))):
        alone = gen(flux, prompt=prompt, seed=seed).latents[0]
        assert (batch[i] - alone).abs().max() <= 1e-4
    assert (gen(flux, seed=6).latents - gen(flux, seed=5).latents).abs().max() > 1e-2


@pytest.mark.parametrize("size", [(144, 400), (336, 192), (256, 256), (176, 176), (128, 656)])
def test_any_size_and_ratio(flux, size):
    res = gen(flux, size=size, steps=2)
    assert res.latents.shape[-2:] == (size[0] // 8, size[1] // 8)
    assert torch.isfinite(res.latents).all()
    assert res.network_calls == 4


@pytest.mark.parametrize("options,message", [
    ({"guidance_schedule": "cosine"}, "cosine_shift, cosine_decay, constant, disable"),
    ({"ntk_factor": 0.5}, "ntk_factor"),
    ({"dwt_level": 0}, "dwt_level"),
    ({"steps_2": 0}, "steps_2"),
    ({"time_shift_1": 0.0}, "time_shift_1"),
    ({"time_shift_2": -1.0}, "time_shift_2"),
    ({"guidance_2": -1.0}, "guidance_2"),
    ({"nope": 1}, "nope"),
])
def test_bad_options(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        methods.create("imax", **options)


def test_other_families_are_refused(tiny):
    for family in ("sd1", "sd3"):
        with pytest.raises(InvalidArgumentError, match="supports flux, not " + family):
            gen(adapt(tiny(family), native_size=16), size=(256, 256))
    with pytest.raises(InvalidArgumentError, match="flux"):
        IMaxPatch(adapt(tiny("sd3"), native_size=16))


def test_defaults_are_the_officials():
    # pipeline_flux_imax.py's signature at 3b38c11: guidance_scale2 7, ntk_factor 10, time_shift_1 3,
    # time_shift_2 6, proportional_attention / text_duplication / swin_pachify on, dwt_level 1,
    # guidance_schedule "cosine_shift"; steps_2 is the run's steps (official: 20)
    o = methods.create("imax").options
    assert (o.guidance_2, o.ntk_factor, o.time_shift_1, o.time_shift_2) == (7.0, 10.0, 3.0, 6.0)
    assert (o.proportional_attention, o.text_duplication, o.swin_patchify) == (True, True, True)
    assert (o.dwt_level, o.guidance_schedule, o.steps_2, o.vae_sample) == (1, "cosine_shift", None, True)


def test_the_time_shifts_set_both_schedules(flux):
    seen, callback = recording_stages()
    gen(flux, size=(256, 256), options={"time_shift_1": 2.0, "time_shift_2": 5.0, "steps_2": 4}, callback=callback)

    def shifted(n, shift):
        s = np.linspace(1.0, 1 / n, n)
        return list(shift * s / (1 + (shift - 1) * s) * 1000)

    got = {stage: [t for s, t, _ in seen if s == stage] for stage in ("native resolution", "high resolution")}
    assert got["native resolution"] == pytest.approx(shifted(STEPS, 2.0), rel=1e-6)
    assert got["high resolution"] == pytest.approx(shifted(4, 5.0), rel=1e-6)


def test_the_high_resolution_stage_gets_guidance_2(flux, monkeypatch):
    guidance = []
    stock = type(flux)._forward

    def spy(self, x, t, embeds, window):
        guidance.append((tuple(x.shape[-2:]), float(embeds.extra["guidance"][0])))
        return stock(self, x, t, embeds, window)

    monkeypatch.setattr(type(flux), "_forward", spy)
    gen(flux, size=(256, 256), guidance=2.5, options={"guidance_2": 6.0, "swin_patchify": False})
    assert guidance == [((16, 16), 2.5)] * STEPS + [((32, 32), 6.0)] * STEPS


def test_swin_patchify_pads_every_even_step_and_ends_at_the_target(flux, monkeypatch):
    shapes = []
    stock = type(flux)._forward

    def spy(self, x, t, embeds, window):
        shapes.append(tuple(x.shape[-2:]))
        return stock(self, x, t, embeds, window)

    monkeypatch.setattr(type(flux), "_forward", spy)
    res = gen(flux, size=(256, 256), options={"steps_2": 3})  # odd: the last step is a padded one
    assert shapes[STEPS:] == [(34, 34), (32, 32), (34, 34)]
    assert res.latents.shape[-2:] == (32, 32)
    shapes.clear()
    gen(flux, size=(256, 256), options={"steps_2": 3, "swin_patchify": False})
    assert shapes[STEPS:] == [(32, 32)] * 3


def test_the_projection_target_is_the_flow_to_the_guidance():
    g = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    n = torch.randn_like(g)
    for sigma in (1.0, 0.7, 0.05):
        x = (1 - sigma) * g + sigma * n
        v_g = im.flow_to(x, g, (1 - sigma, sigma))
        assert torch.allclose(v_g, (x - g) / sigma)  # official: (x - g)/(σ + 1e-6)
        assert torch.allclose(v_g, n - g)  # the velocity of the straight path through g
        assert torch.allclose(x - sigma * v_g, g)  # its clean estimate is g


def test_the_projected_flow_schedules():
    v, v_g = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64).unbind(0)
    low = im.haar_lowpass(v_g - v, 1)
    assert torch.equal(im.project(v, v_g, 0.3, "disable", 1), v)
    assert torch.allclose(im.project(v, v_g, 0.3, "constant", 1), v + low)
    assert torch.allclose(im.project(v, v_g, 0.3, "cosine_decay", 1), v + 0.3 * low)
    assert torch.allclose(im.project(v, v_g, 0.3, "cosine_shift", 1), v + 0.3 * (v_g - v) + 0.7 * low)
    assert torch.allclose(im.project(v, v_g, 1.0, "cosine_shift", 1), v_g)  # the first step: onto the guidance
    assert im.guidance_weight(0, 20) == 1.0 and im.guidance_weight(10, 20) == pytest.approx(0.5)
    assert 0 < im.guidance_weight(19, 20) < 0.01


def test_the_haar_lowpass_is_the_block_mean():
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    mean = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(im.haar_lowpass(x, 1), mean)
    mean4 = torch.nn.functional.avg_pool2d(x, 4).repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.allclose(im.haar_lowpass(x, 2), mean4)
    odd = torch.randn(1, 1, 5, 7)
    assert im.haar_lowpass(odd, 2).shape == odd.shape  # the official pywt round trip fails on odd sizes
    # an odd side: its last row pairs with itself (pywt's symmetric extension of a 2-tap filter)
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0], [9.0, 11.0]])[None, None]
    assert im.haar_lowpass(x, 1).tolist() == [[[[4.0, 4.0], [4.0, 4.0], [10.0, 10.0]]]]


@pytest.mark.parametrize("shape,level", [((8, 12), 1), ((10, 14), 2), ((34, 34), 3), ((18, 42), 2)])
def test_the_haar_lowpass_is_pywts(shape, level):
    pywt = pytest.importorskip("pywt")
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    ours = im.haar_lowpass(torch.from_numpy(x), level).numpy()
    for b in range(2):
        low, *details = pywt.wavedec2(x[b], "haar", level=level)
        zeroed = [low] + [tuple(np.zeros_like(d) for d in ds) for ds in details]
        assert np.allclose(ours[b], pywt.waverec2(zeroed, "haar"), atol=1e-12)


def test_the_constants_are_the_adapters_native_size(tiny, monkeypatch):
    patches = []
    stock_init = IMaxPatch.__init__

    def spy(self, adapter, **kw):
        stock_init(self, adapter, **kw)
        patches.append(self)

    monkeypatch.setattr(IMaxPatch, "__init__", spy)
    for native, grid, copies in ((16, (8, 8), (1, 2)), (8, (4, 4), (2, 5))):
        patches.clear()
        adapter = adapt(tiny("flux"), native_size=native)
        gen(adapter, size=(128, 320), options={"swin_patchify": False})
        stage1, stage2 = patches
        assert stage2.native_grid == grid and stage2.native_tokens == grid[0] * grid[1]
        assert stage1.log[0][1] == (1, 1)  # no text copies in stage 1
        tokens, got, floor = stage2.log[0]
        assert tokens == 8 * 20 and got == copies
        assert floor == tokens + (copies[0] * copies[1] - 1) * stage2.text_len  # official: len(ids) - 512
        assert stage2.text_len == 512  # the tiny T5's length, FLUX's


def test_vae_sample_false_encodes_the_mode(flux):
    a = gen(flux, size=(256, 256), options={"vae_sample": False}).latents
    b = gen(flux, size=(256, 256)).latents
    assert (a - b).abs().max() > 1e-4 and torch.isfinite(a).all()


# ----------------------------------------------------------------------------- the patch


def _call(adapter, size=(16, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, *size, generator=g)
    cond = adapter.encode_prompt(["a red circle"], None, guidance_scale=3.5)
    return adapter.predict(x, torch.tensor(700.0), cond.positive)


def test_the_patch_is_reversible_and_the_stock_tables_below_the_floor(flux):
    net = flux.network
    before = _call(flux)
    with IMaxPatch(flux, ntk_factor=10.0, proportional_attention=True, text_duplication=True):
        changed = _call(flux)
    assert (changed - before).abs().max() > 1e-3
    assert torch.equal(_call(flux), before)
    assert "forward" not in net.pos_embed.__dict__ and not getattr(net, "_anysize_patch", None)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with IMaxPatch(flux, ntk_factor=1.0):  # 160 tokens ≥ the native 64: the floor is below θ's own
        assert torch.equal(_call(flux), before)


def test_rotary_tables_are_the_stock_ones_without_scaling(flux):
    pe = flux.network.pos_embed
    ids = torch.stack([torch.zeros(50), torch.arange(50.0) % 7, torch.arange(50.0) // 7], dim=1)
    cos, sin = rotary_tables(ids, pe.axes_dim, pe.theta, 1.0, 64, 64)
    stock_cos, stock_sin = pe(ids)
    assert torch.allclose(cos, stock_cos, atol=1e-6) and torch.allclose(sin, stock_sin, atol=1e-6)


def test_ntk_frequencies_with_the_position_interpolation_floor():
    dim, theta = 8, 10000.0
    base = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ntk = (10 * theta) ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    got = imax_frequencies(dim, theta, 10.0, 4 * 4096, 4096)  # 2x per side: the floor is ω/2
    assert torch.allclose(got, torch.maximum(ntk, base / 2))
    assert got[0] == 1.0 and torch.allclose(got[-1], base[-1] / 2)  # low frequencies: interpolation wins
    # fewer tokens than native with NTK 1 (stage 1 below the native area): frequencies raised
    assert torch.allclose(imax_frequencies(dim, theta, 1.0, 1024, 4096), base * 2)


def test_proportional_attention_is_one_at_the_training_length(flux):
    assert attention_factor(4608, 4096 + 512) == 1.0
    assert attention_factor(16384 + 4 * 512, 4608) == pytest.approx(math.sqrt(math.log(18432) / math.log(4608)))
    before = _call(flux, size=(16, 16))  # 64 image + 512 text tokens: the native count
    with IMaxPatch(flux, proportional_attention=True):
        assert torch.equal(_call(flux, size=(16, 16)), before)
    wide = _call(flux)  # 160 image tokens: sharper attention
    with IMaxPatch(flux, proportional_attention=True) as patch:
        assert (_call(flux) - wide).abs().max() > 1e-4
        assert patch.keys == 160 + 512


def test_text_duplication_places_copies_per_native_region():
    assert duplication_grid((8, 20), (8, 8)) == (1, 2)
    assert duplication_grid((4, 4), (8, 8)) == (1, 1)
    embeds = torch.randn(2, 3, 5)
    ids = torch.zeros(3, 3)
    e, i = duplicate_text(embeds, ids, (2, 3), (64, 64))
    assert e.shape == (2, 18, 5) and torch.equal(e[:, 3:6], embeds)
    assert i.shape == (18, 3)
    assert [tuple(i[3 * c, 1:].tolist()) for c in range(6)] == [
        (0, 0), (0, 64), (0, 128), (64, 0), (64, 64), (64, 128)]


# ----------------------------------------------------------------------------- everywhere through the registry


def test_registered_with_its_options_in_the_cli(capsys):
    from anysize import cli

    assert "imax" in methods.names()
    assert cli.main(["methods", "imax"]) == 0
    out = capsys.readouterr().out
    for name in ("ntk_factor", "time_shift_2", "guidance_schedule", "swin_patchify"):
        assert name in out


def test_bench_and_eval_accept_it_with_a_flux_model(flux, tmp_path):
    from anysize import bench
    from anysize.eval.run import run_eval
    from anysize.testing.eval import TinyFeatureNet

    rec = bench.bench_one(flux, methods=["direct", "imax"], width=256, height=256, steps=2, repeats=1, warmup=0)
    by_name = {m["method"]: m for m in rec["methods"]}
    assert by_name["imax"]["network_calls"] == 4 and "imax" not in rec["skipped"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a red triangle {i}", "seed": i}) + "\n"
                                for i in range(2)))
    summary = run_eval(tmp_path / "ev", adapter=flux, manifest=manifest, method="imax", width=256, height=256,
                       steps=2, metrics=["is"], extractor=TinyFeatureNet(), warmup=0, progress=False)
    assert summary["config"]["method"] == "imax" and summary["config"]["n"] == 2
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["config"]["method"] == "imax"


def test_the_demo_sheet_skips_it_on_the_toy_model(tiny):
    from anysize.toy.demo import demo_methods

    assert "imax" not in demo_methods(adapt(tiny("sd1")))
    assert "imax" in demo_methods(adapt(tiny("flux")))
    # asked for by name on a model it cannot run on: refused with the family it needs, not dropped
    for chosen in (["imax"], ["direct", "imax"]):
        with pytest.raises(InvalidArgumentError, match=r"^method 'imax' supports flux, not sd1 \(the demo's model\)$"):
            demo_methods(adapt(tiny("sd1")), chosen)
    assert demo_methods(adapt(tiny("flux")), ["direct", "imax"]) == ["direct", "imax"]


def test_a_controlnet_sees_the_canvas_control_framed_on_the_swin_padded_steps(flux, monkeypatch):
    """The padded steps' inputs are the canvas with a 1-px zero border: its ControlNet input is the
    control of the canvas with no control in the border (a framed view), not the control image
    stretched over the padded canvas."""
    from anysize.builders.controlnet import tiny_controlnet

    net = tiny_controlnet(flux.pipe, seed=1)
    views = []
    stock = type(flux).predict_guided

    def spy(self, x, t, cond, window=None, **kw):
        views.append((tuple(x.shape[-2:]), kw.get("view")))
        return stock(self, x, t, cond, window, **kw)

    monkeypatch.setattr(type(flux), "predict_guided", spy)
    image = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (256, 256), (200, 40, 40))
    gen(flux, size=(256, 256), options={"steps_2": 2}, control=anysize.Control(net, image, 0.8))
    high = views[STEPS:]
    assert [shape for shape, _ in high] == [(34, 34), (32, 32)]
    (_, framed), (_, plain) = high
    assert plain is None  # an unpadded step is a plain whole-canvas window
    assert framed.canvas == (32, 32)
    index = framed.index[0]
    assert (index[0] == -1).all() and (index[-1] == -1).all() and (index[:, 0] == -1).all() and (index[:, -1] == -1).all()
    assert torch.equal(index[1:-1, 1:-1].flatten(), torch.arange(32 * 32))

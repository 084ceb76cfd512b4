"""Adapters: sizes, windows, positions, loading, x0 conversion, for all five families."""

import threading

import numpy as np
import pytest
import torch

import anysize
from anysize.errors import Cancelled, InvalidArgumentError, InvalidSizeError, ModelLoadError, UnknownChoiceError
from anysize.models import Window, adapt, detect_family
from anysize.noise import NoiseSpace
from anysize.schedulers import make_scheduler

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]


def run(adapter, **kw):
    kw.setdefault("steps", 2)
    kw.setdefault("seed", 0)
    kw.setdefault("output_type", "np")
    return anysize.generate(adapter, kw.pop("prompt", "a red square"), progress=False, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_family(tiny, family):
    assert detect_family(tiny(family)) == family


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hw", [(128, 256), (384, 128)])  # 2:1 and 1:3
def test_non_native_aspect_ratios_run(tiny, family, hw):
    adapter = adapt(tiny(family))
    out = run(adapter, height=hw[0], width=hw[1], scheduler="flow_euler" if adapter.scheduler_kind == "flow" else "ddim")
    img = out.images[0]
    assert img.shape == (hw[0], hw[1], 3)
    assert np.isfinite(img).all() and img.std() > 0
    assert out.network_calls == 2 * (2 if adapter.family != "flux" else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_identical_bytes(tiny, family):
    import io

    adapter = adapt(tiny(family))

    def png(seed):
        r = anysize.generate(adapter, "a cat", steps=2, seed=seed, width=128, height=128, progress=False)
        buf = io.BytesIO()
        r.image.save(buf, format="PNG")
        return buf.getvalue()

    assert png(4) == png(4)
    assert png(4) != png(5)


def test_sdxl_window_passes_crop_coordinates(tiny):
    adapter = adapt(tiny("sdxl"))
    seen = []
    handle = adapter.network.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True
    )
    try:
        cond = adapter.encode_prompt(["a cat"], None, guidance_scale=5.0)
        x = torch.randn(1, 4, 16, 24)
        window = Window(top=8, left=16, height=16, width=24, canvas=(40, 64))
        adapter.predict_guided(x, torch.tensor(500), cond, window)
        adapter.predict_guided(x, torch.tensor(500), cond, None)
    finally:
        handle.remove()
    # (original h, w, crop top, left, target h, w) in pixels, for both CFG halves
    assert seen[0].tolist() == [[320, 512, 64, 128, 128, 192]] * 2
    assert seen[1].tolist() == [[128, 192, 0, 0, 128, 192]] * 2


def test_flux_window_position_ids_are_canvas_coordinates(tiny):
    adapter = adapt(tiny("flux"))
    ids = adapter.position_ids(Window(top=4, left=6, height=8, width=4, canvas=(32, 32)))
    assert ids.shape == (4 * 2, 3)
    assert ids[0].tolist() == [0, 2, 3] and ids[-1].tolist() == [0, 5, 4]
    with pytest.raises(InvalidArgumentError, match="multiples of 2"):
        adapter.predict(torch.randn(1, 16, 8, 4), torch.tensor(500.0),
                        adapter.encode_prompt(["a"], None, guidance_scale=3.5).positive,
                        Window(top=3, left=6, height=8, width=4, canvas=(32, 32)))


def test_flux_pack_unpack_roundtrip():
    from anysize.models.dit import FluxAdapter

    x = torch.randn(2, 16, 6, 10)
    assert torch.equal(FluxAdapter.unpack(FluxAdapter.pack(x), 6, 10), x)


def test_sd3_window_gets_its_slice_of_the_position_table(tiny):
    adapter = adapt(tiny("sd3"))
    pe = adapter.network.pos_embed
    full = Window.full(16, 24)
    win = Window(top=4, left=8, height=8, width=12, canvas=(16, 24))
    captured = {}
    orig = type(pe).cropped_pos_embed

    with adapter._positions(full):
        table_full = pe.cropped_pos_embed(16, 24).reshape(8, 12, -1)
    with adapter._positions(win):
        captured["win"] = pe.cropped_pos_embed(8, 12).reshape(4, 6, -1)
    assert torch.equal(captured["win"], table_full[2:6, 4:10])
    assert "cropped_pos_embed" not in pe.__dict__ and type(pe).cropped_pos_embed is orig


def test_sd3_window_larger_than_position_table_is_refused(tiny):
    adapter = adapt(tiny("sd3"))
    m = adapter.network.pos_embed.pos_embed_max_size
    too_big = (m + 1) * adapter.size_multiple
    with pytest.raises(InvalidArgumentError, match="position table"):
        run(adapter, height=128, width=too_big)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_loading_from_a_saved_folder(tmp_path, family):
    from anysize.builders import save_tiny_pipeline, tiny_pipeline

    folder = save_tiny_pipeline(family, tmp_path / family)
    adapter = anysize.load(folder)
    assert adapter.family == family and adapter.source == str(folder)
    a = run(adapter, width=128, height=128).images[0]
    b = run(adapt(tiny_pipeline(family)), width=128, height=128).images[0]
    assert np.abs(a - b).max() <= 1e-5


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        anysize.load(tmp_path)
    with pytest.raises(ModelLoadError):
        anysize.load(tmp_path / "missing")
    with pytest.raises(UnknownChoiceError, match="fp32"):
        anysize.load(tmp_path, dtype="fp8")
    with pytest.raises(UnknownChoiceError, match="sdxl"):
        anysize.load(tmp_path, family="sd4")
    with pytest.raises(UnknownChoiceError, match="sequential"):
        anysize.load(tmp_path, offload="always")


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(width=0), InvalidSizeError, "positive"),
        (dict(height=-8), InvalidSizeError, "positive"),
        (dict(width=100), InvalidSizeError, "96 or 104"),
        (dict(width=4), InvalidSizeError, "8"),
        (dict(width=128.0), InvalidSizeError, "integer"),
        (dict(width=10**6, height=10**6), InvalidSizeError, "largest square"),
        (dict(method="nope"), UnknownChoiceError, "direct"),
        (dict(scheduler="nope"), UnknownChoiceError, "euler"),
        (dict(scheduler="flow_euler"), InvalidArgumentError, "ddim"),
        (dict(steps=0), InvalidArgumentError, "steps"),
        (dict(guidance=-1.0), InvalidArgumentError, "guidance"),
        (dict(prompt=[]), InvalidArgumentError, "empty prompt list"),
        (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), InvalidArgumentError, "negative"),
        (dict(method_options={"stride": 8}), InvalidArgumentError, "no option stride"),
        (dict(output_type="jpg"), InvalidArgumentError, "pil"),
        (dict(tiled_vae="maybe"), InvalidArgumentError, "'fast'"),
    ],
)
def test_bad_input_gives_clear_typed_error(tiny, kw, err, match):
    adapter = adapt(tiny("sd1"))
    calls = adapter.calls
    with pytest.raises(err, match=match):
        run(adapter, **kw)
    assert adapter.calls == calls  # refused before any network call


def test_dit_sizes_must_be_multiples_of_16(tiny):
    with pytest.raises(InvalidSizeError, match="multiple of 16"):
        run(adapt(tiny("flux")), width=136)


def test_callback_sees_every_step_and_can_cancel(tiny):
    adapter = adapt(tiny("sd1"))
    seen = []
    run(adapter, steps=3, scheduler="ddim", callback=lambda info: seen.append((info.index, info.num_steps, tuple(info.latents.shape))))
    assert seen == [(0, 3, (1, 4, 16, 16)), (1, 3, (1, 4, 16, 16)), (2, 3, (1, 4, 16, 16))]
    with pytest.raises(Cancelled):
        run(adapter, steps=3, callback=lambda info: info.index < 1)
    event = threading.Event()
    event.set()
    calls = adapter.calls
    with pytest.raises(Cancelled):
        run(adapter, steps=3, cancel=event)
    assert adapter.calls == calls


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++2m", "heun", "unipc", "euler_a"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_to_x0_agrees_with_the_schedulers_own_estimate(tiny, scheduler, prediction):
    adapter = adapt(tiny("sd2", prediction_type=prediction))
    s = make_scheduler(adapter, scheduler)
    s.set_timesteps(10)
    x = torch.randn(1, 4, 8, 8) * float(getattr(s, "init_noise_sigma", 1.0))
    out = torch.randn(1, 4, 8, 8)
    t = s.timesteps[3]
    x0 = adapter.to_x0(s, x, out, t)
    if scheduler in ("ddim", "euler", "euler_a"):
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(3)
        ref = s.step(out, t, x).pred_original_sample
    else:  # the multistep/Heun/LMS schedulers do not return x0: check the algebra instead
        space = NoiseSpace.of(s)
        a, b = space.coefficients(t)
        c = space.input_scale(t)
        eps = out if prediction == "epsilon" else (a * c) * out + (b * c) * (x * c)
        ref = (x - b * eps) / a
    assert torch.allclose(x0, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler", [None, "ddim", "euler", "flow_euler"])
def test_from_x0_then_to_x0_roundtrip(tiny, scheduler):
    family = "sd3" if scheduler == "flow_euler" else "sd1"
    adapter = adapt(tiny(family))
    s = make_scheduler(adapter, scheduler)
    adapter.set_timesteps(s, 10, (16, 16))
    t = s.timesteps[4]
    x0, noise = torch.randn(1, adapter.latent_channels, 8, 8), torch.randn(1, adapter.latent_channels, 8, 8)
    x = adapter.from_x0(s, x0, noise, t)
    # the exact model output for this state, in the model's parametrisation
    space = NoiseSpace.of(s)
    a, b = space.coefficients(t)
    if space.kind == "flow":
        out = noise - x0
    else:
        out = noise  # epsilon models
    assert torch.allclose(adapter.to_x0(s, x, out, t), x0, atol=1e-5)


@pytest.mark.parametrize("mode", [True, "fast"])
def test_tiled_vae_modes_reach_the_decoder(tiny, monkeypatch, mode):
    """tiled_vae=True / "fast" decode through anysize.models.tiled_vae with exact / fast statistics; at this
    size the grid is one tile, so the image equals the untiled one."""
    from anysize.models import tiled_vae as tiling

    adapter = adapt(tiny("sd1"))
    seen = []
    real = tiling.tiled_decode
    monkeypatch.setattr(tiling, "tiled_decode", lambda vae, z, **kw: seen.append(kw.get("stats", "exact")) or real(vae, z, **kw))
    plain = run(adapter, steps=2, output_type="np", tiled_vae=False).images
    tiled = run(adapter, steps=2, output_type="np", tiled_vae=mode).images
    assert seen == ["exact" if mode is True else "fast"]
    assert abs(plain - tiled).max() <= 1e-6


def test_model_folder_declares_its_sampling_defaults(tmp_path):
    from anysize.models import MODEL_DEFAULTS_FILE
    from anysize.builders import save_tiny_pipeline

    folder = save_tiny_pipeline("sd1", tmp_path / "m")
    assert anysize.load(folder).default_steps == 50  # SD's own default without the file
    (folder / MODEL_DEFAULTS_FILE).write_text('{"default_steps": 3, "default_guidance": 2.5, "note": "ignored"}')
    adapter = anysize.load(folder)
    assert (adapter.default_steps, adapter.default_guidance) == (3, 2.5)
    result = anysize.generate(adapter, "a red square", progress=False, output_type="latent")
    assert result.config["steps"] == 3 and result.config["guidance"] == 2.5
    (folder / MODEL_DEFAULTS_FILE).write_text('{"default_steps": "many"}')
    with pytest.raises(ModelLoadError, match="anysize.json"):
        anysize.load(folder)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_the_device_is_diffusers_execution_device_without_walking_modules(tiny, family, monkeypatch):
    """Without offload hooks the adapter's device is the network's, as diffusers' _execution_device
    says (which walks every module: it is asked only when a hook is there)."""
    from diffusers.hooks import apply_group_offloading

    adapter = adapt(tiny(family))
    pipe = adapter.pipe
    expected = pipe._execution_device
    asked = []
    real = type(pipe)._execution_device
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda p: (asked.append(1), real.fget(p))[1]))
    assert adapter.device == expected and not asked
    # a diffusers hook (group offloading here, the CPU as both devices) sends it to _execution_device
    net = adapter.network
    apply_group_offloading(net, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1)
    try:
        assert adapter.device == expected and asked
    finally:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(net).remove_hook("group_offloading", recurse=True)

"""`anysize.upscale` and `anysize upscale`: resize, encode, re-noise, denoise tiled, decode; bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

import anysize
from anysize import api, cli
from anysize.models import tiled_vae as tiling
from anysize.api import upscale_size
from anysize.errors import InvalidArgumentError, InvalidSizeError
from anysize.models import adapt
from anysize.output import read_metadata, read_parameters


def picture(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def up(adapter, image=None, **kw):
    kw = {"steps": 4, "strength": 0.5, "seed": 3, "progress": False, **kw}
    return anysize.upscale(adapter, picture() if image is None else image, **kw)


# ------------------------------------------------------------------------------------------ target size


def test_upscale_size_rounds_scale_to_the_pixel_factor():
    assert upscale_size((64, 96), 8, scale=2) == (128, 192, False)
    assert upscale_size((64, 96), 8, scale=2.01) == (128, 192, True)   # 128.6 -> 128, 193 -> 192
    assert upscale_size((64, 96), 8, scale=2.06) == (128, 200, True)   # 131.8 -> 128, 197.8 -> 200
    assert upscale_size((3, 3), 8, scale=1) == (8, 8, True)            # never below one multiple
    assert upscale_size((64, 96), 8, size=(200, 100)) == (100, 200, False)  # (width, height), checked later


@pytest.mark.parametrize("kw,match", [
    ({"scale": 0}, "scale must be a number > 0"),
    ({"scale": -2}, "scale must be a number > 0"),
    ({"scale": float("nan")}, "scale must be a number > 0"),
    ({"scale": float("inf")}, "scale must be a number > 0"),
    ({"scale": True}, "scale must be a number > 0"),
    ({}, "exactly one of scale or size"),
    ({"scale": 2, "size": (128, 128)}, "exactly one of scale or size"),
])
def test_upscale_size_bad_input(kw, match):
    with pytest.raises(InvalidArgumentError, match=match):
        upscale_size((64, 96), 8, **kw)


def test_upscale_size_rejects_non_positive_sizes():
    with pytest.raises(InvalidSizeError, match="width"):
        upscale_size((64, 96), 8, size=(0, 64))


# ------------------------------------------------------------------------------------------ the API


def test_direct_upscale_at_scale_1_equals_the_diffusers_img2img_pipeline(tiny):
    """Same image, strength, steps and seed: encode (posterior sample), re-noise and denoise agree."""
    import diffusers

    pipe = tiny("sd1")
    adapter = adapt(pipe)
    ours = up(adapter, method="direct", scale=1, strength=0.6, steps=5, prompt="a cat", output_type="np").images
    ref_pipe = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe("a cat", image=picture(), strength=0.6, num_inference_steps=5, guidance_scale=adapter.default_guidance,
                   generator=torch.Generator().manual_seed(3), output_type="np").images
    assert ours.shape == ref.shape == (1, 64, 96, 3)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("method", ["fstd", "multidiffusion", "hidiffusion"])
def test_tiled_upscale_size_determinism_and_strength(tiny, method):
    adapter = adapt(tiny("sd1"))
    a = up(adapter, method=method, scale=2, output_type="np")
    assert a.images.shape == (1, 128, 192, 3)
    assert a.latents.shape == (1, 4, 16, 24)
    assert np.array_equal(a.images, up(adapter, method=method, scale=2, output_type="np").images)
    assert not np.allclose(a.images, up(adapter, method=method, scale=2, seed=4, output_type="np").images)
    assert not np.allclose(a.images, up(adapter, method=method, scale=2, strength=0.9, output_type="np").images)
    assert a.config["method"] == method and a.config["strength"] == 0.5


def test_fstd_upscale_calls_tiles_of_the_native_size(tiny):
    """16x24 latent canvas, 16-px native tiles: 2 tiles per step, 2 steps of 4 at strength 0.5; with a
    prompt CFG doubles the calls, without one guidance is off by default."""
    adapter = adapt(tiny("sd1"))
    r = up(adapter, method="fstd", scale=2, scheduler="ddim", prompt="a cat")
    assert r.network_calls == 2 * 2 * 2 and r.config["guidance"] == adapter.default_guidance
    r = up(adapter, method="fstd", scale=2, scheduler="ddim", prompt="a cat", strength=1.0)
    assert r.network_calls == 2 * 4 * 2
    r = up(adapter, method="fstd", scale=2, scheduler="ddim")
    assert r.network_calls == 2 * 2 and r.config["guidance"] == 1.0
    r = up(adapter, method="fstd", scale=2, scheduler="ddim", guidance=5.0)
    assert r.network_calls == 2 * 2 * 2


def test_upscale_config_records_the_source(tiny, tmp_path):
    adapter = adapt(tiny("sd1"))
    path = tmp_path / "in.png"
    picture().save(path)
    r = up(adapter, path, method="fstd", scale=2.01, method_options={"offset_range": 4})
    assert r.image.size == (192, 128)
    u = r.config["upscale"]
    assert u == {"source": "in.png", "source_size": [96, 64], "scale": 2.01, "size": [192, 128], "rounded": True,
                 "resample": "bicubic", "strength": 0.5}
    assert r.config["method_options"]["offset_range"] == 4


def test_large_upscale_encodes_and_decodes_tiled(tiny, monkeypatch):
    adapter = adapt(tiny("sd1"))
    seen = []
    for name in ("tiled_encode", "tiled_decode"):
        real = getattr(tiling, name)
        monkeypatch.setattr(tiling, name, lambda *a, _real=real, _n=name, **k: seen.append(_n) or _real(*a, **k))
    r = up(adapter, method="fstd", scale=2, tiled_vae="fast", steps=2)
    assert seen == ["tiled_encode", "tiled_decode"]
    assert r.image.size == (192, 128)
    seen.clear()
    up(adapter, method="fstd", scale=2, tiled_vae="auto", steps=2)  # 192x128 is far below the 2048² threshold
    assert seen == []


@pytest.mark.parametrize("kw,err,match", [
    ({"strength": 0.0}, InvalidArgumentError, r"strength must be in \(0, 1\]"),
    ({"strength": 1.5}, InvalidArgumentError, r"strength must be in \(0, 1\]"),
    ({"strength": -0.2}, InvalidArgumentError, r"strength must be in \(0, 1\]"),
    ({"strength": 0.1, "steps": 4}, InvalidArgumentError, "runs no step"),
    ({"scale": 0}, InvalidArgumentError, "scale must be a number > 0"),
    ({"scale": -1}, InvalidArgumentError, "scale must be a number > 0"),
    ({"scale": 2, "size": (128, 128)}, InvalidArgumentError, "exactly one"),
    ({"scale": None}, InvalidArgumentError, "exactly one"),
    ({"scale": None, "size": (100, 128)}, InvalidSizeError, "not a multiple of 8"),
    ({"method_options": {"tile": 32}}, InvalidArgumentError, "larger than the 16x24 latent canvas"),
    ({"method": "multidiffusion", "method_options": {"window": 32}}, InvalidArgumentError, "larger than"),
    ({"method": "asd"}, InvalidArgumentError, "cannot upscale an image; use one of: direct, elastic, fstd, hidiffusion, multidiffusion"),
    ({"method": "nope"}, Exception, "valid choices"),
    ({"prompt": ["a", "b"]}, InvalidArgumentError, "one prompt"),
])
def test_upscale_bad_input(tiny, kw, err, match):
    adapter = adapt(tiny("sd1"))
    kw = {"scale": 2, "method": "fstd", **kw}
    with pytest.raises(err, match=match):
        up(adapter, **kw)


def test_unreadable_images(tiny, tmp_path):
    adapter = adapt(tiny("sd1"))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InvalidArgumentError, match="cannot read image"):
        up(adapter, bad, scale=2)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        up(adapter, tmp_path / "missing.png", scale=2)
    with pytest.raises(InvalidArgumentError, match="PIL image or a file path"):
        up(adapter, np.zeros((8, 8, 3)), scale=2)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picture().save(tmp_path / "in.png")
    return tmp_path


def run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_up(capsys, model_dir, *args):
    return run(capsys, "upscale", "in.png", "--model", model_dir, "--steps", "4", "--quiet", *args)


def test_cli_upscale_writes_png_with_metadata(capsys, model_dir, work):
    rc, out, err = cli_up(capsys, model_dir, "--scale", "2", "--method", "fstd", "--strength", "0.5",
                          "--prompt", "high quality", "--set", "offset_range=4", "--seed", "7")
    assert rc == 0, err
    assert out.strip() == "in-fstd-192x128-s7.png"
    meta = read_metadata(work / "in-fstd-192x128-s7.png")
    assert meta["upscale"]["source"] == "in.png" and meta["upscale"]["scale"] == 2.0
    assert meta["strength"] == 0.5 and meta["method"] == "fstd" and meta["method_options"]["offset_range"] == 4
    assert (meta["width"], meta["height"], meta["seed"], meta["prompt"]) == (192, 128, 7, "high quality")
    params = read_parameters(work / "in-fstd-192x128-s7.png")
    assert "Denoising strength: 0.5" in params and "Upscale source: in.png" in params and "offset_range: 4" in params
    assert Image.open(work / "in-fstd-192x128-s7.png").size == (192, 128)


def test_cli_upscale_refuses_to_overwrite_without_force(capsys, model_dir, work):
    assert cli_up(capsys, model_dir, "--size", "192x128", "--out", "o.png")[0] == 0
    before = (work / "o.png").read_bytes()
    rc, out, err = cli_up(capsys, model_dir, "--size", "192x128", "--out", "o.png", "--seed", "9")
    assert rc == 2 and "exists" in err and "--force" in err
    assert (work / "o.png").read_bytes() == before
    assert cli_up(capsys, model_dir, "--size", "192x128", "--out", "o.png", "--seed", "9", "--force")[0] == 0
    assert (work / "o.png").read_bytes() != before


def test_cli_upscale_notes_the_rounding(capsys, model_dir, work):
    rc, out, err = run(capsys, "upscale", "in.png", "--model", model_dir, "--steps", "4", "--scale", "2.01",
                       "--out", "r.png")
    assert rc == 0, err
    assert "96x64 x 2.01 rounded to 192x128 (multiples of 8" in err


def test_cli_upscale_help(capsys):
    rc, out, _ = run(capsys, "upscale", "--help")
    assert rc == 0
    for text in ("--scale", "--size", "--strength", "bicubic", "fstd", "multidiffusion", "--force"):
        assert text in out
    assert "  asd " not in out  # only the methods that can upscale are listed
    assert "upscale" in run(capsys, "--help")[1]


@pytest.mark.parametrize("args,message", [
    (["--scale", "0"], "--scale must be a number > 0"),
    (["--scale", "-2"], "--scale must be a number > 0"),
    (["--scale", "2", "--size", "128x128"], "not allowed with argument"),
    ([], "give the target as --scale S or --size WxH"),
    (["--scale", "2", "--strength", "1.5"], r"strength must be in (0, 1]"),
    (["--scale", "2", "--strength", "0"], r"strength must be in (0, 1]"),
    (["--scale", "2", "--method", "asd"], "cannot upscale an image; use one of"),
    (["--scale", "2", "--method", "nope"], "unknown method 'nope'; valid choices: direct, elastic, fstd, hidiffusion, "
                                           "multidiffusion\n"),  # those that can upscale
    (["--scale", "2", "--set", "tile=0"], "tile must be an integer >= 1"),
    (["--size", "100x128"], "not a multiple of 8"),
    (["--scale", "2", "--out", "x.jpg"], "must end in .png"),
])
def test_cli_upscale_bad_input_fails_before_loading(capsys, model_dir, work, monkeypatch, args, message):
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("model loaded"))
    rc, out, err = cli_up(capsys, model_dir, *args)
    assert rc == 2
    assert message in err
    assert sorted(p.name for p in work.iterdir()) == ["in.png"]


def test_cli_upscale_unreadable_image(capsys, model_dir, work, monkeypatch):
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("model loaded"))
    (work / "bad.png").write_text("no")
    rc, _, err = run(capsys, "upscale", "bad.png", "--scale", "2", "--model", model_dir)
    assert rc == 2 and "cannot read image bad.png" in err
    rc, _, err = run(capsys, "upscale", "missing.png", "--scale", "2", "--model", model_dir)
    assert rc == 2 and "does not exist" in err


def test_cli_tile_larger_than_canvas(capsys, model_dir, work):
    rc, _, err = cli_up(capsys, model_dir, "--scale", "2", "--set", "tile=32")
    assert rc == 2 and "larger than the 16x24 latent canvas" in err
    assert sorted(p.name for p in work.iterdir()) == ["in.png"]


# ------------------------------------------------------------------------------------------ the x4 upscaler


@pytest.fixture(scope="module")
def x4():
    from anysize.builders import tiny_x4_upscaler_pipeline

    return tiny_x4_upscaler_pipeline()


def test_x4_family_is_detected(x4):
    from anysize.models import detect_family

    adapter = adapt(x4)
    assert detect_family(x4) == adapter.family == "sd-x4-upscaler"
    assert adapter.vae_factor == 4 and adapter.native_size == (64, 64) and adapter.prediction_type == "v_prediction"


@pytest.mark.parametrize("lr_hw", [(16, 16), (16, 24)])  # native, and wider than native
def test_x4_direct_equals_the_stock_upscale_pipeline(x4, lr_hw):
    lr = picture(*lr_hw, seed=1)
    ours = anysize.upscale(x4, lr, scale=4, method="direct", prompt="a cat", steps=5, seed=3, noise_level=30,
                           progress=False, output_type="np").images
    ref = x4("a cat", image=lr, num_inference_steps=5, noise_level=30, generator=torch.Generator().manual_seed(3),
             output_type="np").images
    assert ours.shape == ref.shape == (1, lr_hw[0] * 4, lr_hw[1] * 4, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    other = anysize.upscale(x4, picture(*lr_hw, seed=2), scale=4, method="direct", prompt="a cat", steps=5, seed=3,
                            noise_level=30, progress=False, output_type="np").images
    assert not np.allclose(ours, other)  # the image conditions the output


def test_x4_fstd_conditions_every_tile_on_its_crop(x4):
    """On a 2x native canvas (32x48 latent, 16-px tiles), every U-Net call's 3 image channels are the
    crop of the once-noised low-res image under its tile."""
    adapter = adapt(x4)
    lr = picture(16, 24, seed=1)
    seen = []
    hook = x4.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 4:].clone()))
    try:
        r = anysize.upscale(adapter, lr, scale=8, method="fstd", steps=4, seed=3, scheduler="ddim", progress=False,
                            prompt="a cat", method_options={"offset_range": 0})
    finally:
        hook.remove()
    assert r.image.size == (192, 128) and r.latents.shape == (1, 4, 32, 48)
    assert len(seen) == 4 * 6 and r.network_calls == 4 * 6 * 2  # 6 tiles per step, CFG doubles each call
    # the noisy image, drawn first from the seed as the stock pipeline does
    full = api.image_to_tensor(lr, 32, 48)
    noisy = x4.low_res_scheduler.add_noise(full, torch.randn(full.shape, generator=torch.Generator().manual_seed(3)),
                                           torch.tensor([20]))
    crops = [noisy[..., r0:r0 + 16, c0:c0 + 16] for r0 in (0, 16) for c0 in (0, 16, 32)]
    for k, inp in enumerate(seen):
        assert inp.shape == (2, 3, 16, 16)
        assert torch.allclose(inp[0], crops[k % 6][0]) and torch.allclose(inp[1], crops[k % 6][0])


def test_x4_below_full_strength_starts_from_the_image(x4):
    r = anysize.upscale(x4, picture(16, 24), scale=8, method="fstd", strength=0.5, steps=4, seed=3, progress=False)
    assert r.image.size == (192, 128) and r.config["upscale"]["strength"] == 0.5
    assert r.config["upscale"]["noise_level"] == 20


def test_x4_bad_input(x4, tiny):
    with pytest.raises(InvalidArgumentError, match=r"noise_level must be an integer in \[0, 350\]"):
        anysize.upscale(x4, picture(16, 16), scale=4, method="direct", steps=2, noise_level=351, progress=False)
    with pytest.raises(InvalidArgumentError, match="cannot generate from text alone"):
        anysize.generate(x4, "a cat", steps=2, progress=False)
    with pytest.raises(InvalidArgumentError, match="noise_level is an option of image-conditioned upscalers"):
        up(adapt(tiny("sd1")), scale=2, noise_level=20)


def test_cli_upscale_with_an_x4_upscaler_folder(capsys, work, tmp_path_factory):
    from anysize.builders import tiny_x4_upscaler_pipeline

    folder = tmp_path_factory.mktemp("x4") / "m"
    tiny_x4_upscaler_pipeline().save_pretrained(folder, safe_serialization=True)
    rc, out, err = run(capsys, "upscale", "in.png", "--model", folder, "--scale", "4", "--steps", "2",
                       "--noise-level", "40", "--quiet", "--out", "x4.png")
    assert rc == 0, err
    meta = read_metadata(work / "x4.png")
    assert meta["family"] == "sd-x4-upscaler" and meta["method"] == "fstd"
    assert meta["upscale"]["noise_level"] == 40 and meta["upscale"]["strength"] == 1.0
    assert Image.open(work / "x4.png").size == (384, 256)
    rc, _, err = run(capsys, "upscale", "in.png", "--model", folder, "--scale", "4", "--noise-level", "400", "--quiet",
                     "--out", "bad.png")
    assert rc == 2 and "noise_level must be an integer in [0, 350]" in err


def test_large_images_are_converted_to_pil_in_strips_with_the_same_bytes(tiny, monkeypatch):
    from anysize.models import base

    adapter = adapt(tiny("sd1"))
    images = torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # some out of range
    stock = adapter.postprocess(images)
    monkeypatch.setattr(base, "LEAN_POSTPROCESS_PIXELS", 0)
    monkeypatch.setattr(base, "_to_pil_by_rows", lambda img, rows=256, _f=base._to_pil_by_rows: _f(img, rows=7))
    lean = adapter.postprocess(images)
    assert [np.asarray(a).tobytes() for a in lean] == [np.asarray(b).tobytes() for b in stock]
    assert adapter.postprocess(images, output_type="np").shape == (2, 40, 24, 3)  # other types: the processor


def test_only_methods_that_refine_a_canvas_upscale():
    from anysize.methods import METHODS

    assert {n for n, cls in METHODS.items() if cls.refines} == {"direct", "fstd", "multidiffusion", "hidiffusion", "elastic"}

"""asd: ARAD buckets (Table 5), stage I at the nearest bucket (optional LoRA), stage II FSTD enlargement."""

import math

import numpy as np
from PIL import Image
import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.methods import create
from anysize.methods.asd import cover_crop
from anysize.methods.direct import Direct
from anysize.methods.fstd import FSTD
from anysize.models import adapt

PAPER_SIZES = [(512, 512), (576, 768), (768, 576), (576, 1024), (1024, 576), (640, 1024), (1024, 640), (512, 1024),
               (1024, 512)]


def gen(adapter, method="asd", **kw):
    kw = {"steps": 4, "seed": 1, "progress": False, "output_type": "np", **kw}
    return anysize.generate(adapter, "a cat", method=method, **kw)


# ------------------------------------------------------------------------------------------ stage II resize


def test_cover_crop_covers_then_centres():
    x = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(1, 3, 4, 8).contiguous()  # a horizontal ramp
    assert cover_crop(x, 4, 8) is x
    y = cover_crop(x, 16, 16)  # scale max(16/4, 16/8) = 4 -> 16x32, centre 16 columns
    assert y.shape == (1, 3, 16, 16)
    assert torch.allclose(y[..., 0, :], y[..., -1, :])  # rows identical: no vertical change
    assert abs(float(y.mean())) < 1e-5  # centred on the ramp's middle (the ramp is odd about it)
    assert float(y[..., 0].mean()) < -0.2 and float(y[..., -1].mean()) > 0.2
    assert y.abs().max() <= 1.0
    z = cover_crop(x, 2, 2)  # shrinking: max(2/4, 2/8) = 0.5 -> 2x4, centre 2 columns
    assert z.shape == (1, 3, 2, 2) and abs(float(z.mean())) < 1e-5


# ------------------------------------------------------------------------------------------ the method


def test_asd_at_native_size_is_plain_generation(tiny):
    adapter = adapt(tiny("sd1"))
    asd = anysize.generate(adapter, ["a cat", "a dog"], method="asd", steps=4, seed=1, progress=False, output_type="np")
    direct = anysize.generate(adapter, ["a cat", "a dog"], method="direct", steps=4, seed=1, progress=False,
                              output_type="np")
    assert np.array_equal(asd.images, direct.images)
    assert asd.network_calls == direct.network_calls


def test_asd_at_a_bucket_size_is_plain_generation_at_that_size(tiny):
    adapter = adapt(tiny("sd1"))  # native 128: buckets are Table 5 / 4, e.g. 144x192 (H x W)
    asd = gen(adapter, width=192, height=144)
    assert np.array_equal(asd.images, gen(adapter, "direct", width=192, height=144).images)


def test_asd_two_stages(tiny, monkeypatch):
    adapter = adapt(tiny("sd1"))
    stage1, refines = [], []
    real_run, real_refine = Direct.run, FSTD.refine
    monkeypatch.setattr(Direct, "run", lambda self, job: stage1.append((job.height, job.width)) or real_run(self, job))

    def spy(self, job, latents, strength, **kw):
        refines.append((tuple(latents.shape), strength, (job.height, job.width)))
        return real_refine(self, job, latents, strength, **kw)

    monkeypatch.setattr(FSTD, "refine", spy)
    r = gen(adapter, width=400, height=208, method_options={"strength": 0.75})  # r = 0.52: the 1:2 bucket
    assert stage1 == [(128, 256)]
    assert refines == [((1, 4, 26, 50), 0.75, (208, 400))]
    assert r.images.shape == (1, 208, 400, 3)
    assert r.config["method_options"]["strength"] == 0.75


def test_asd_is_deterministic_and_seeded(tiny):
    adapter = adapt(tiny("sd1"))
    a = gen(adapter, width=256, height=256)
    assert np.array_equal(a.images, gen(adapter, width=256, height=256).images)
    assert not np.allclose(a.images, gen(adapter, width=256, height=256, seed=2).images)
    assert not np.allclose(a.images, gen(adapter, width=256, height=256, method_options={"strength": 0.3}).images)


def test_asd_differs_from_direct_beyond_native(tiny):
    adapter = adapt(tiny("sd1"))
    assert not np.allclose(gen(adapter, width=320, height=128).images,
                           gen(adapter, "direct", width=320, height=128).images)


def test_fstd_options_reach_stage_two(tiny):
    adapter = adapt(tiny("sd1"))
    with pytest.raises(InvalidArgumentError, match="larger than the 16x33 latent canvas"):
        gen(adapter, width=264, height=128, method_options={"fstd": {"tile": 24}})
    gen(adapter, width=256, height=128, method_options={"fstd": {"tile": 24}})  # the 1:2 bucket: no stage II
    m = create("asd", fstd={"tile": 8, "offset_range": 2})
    assert m.stage2.options.tile == 8 and m.stage2.options.offset_range == 2


@pytest.mark.parametrize("options,match", [
    ({"strength": 0}, r"strength must be in \(0, 1\]"),
    ({"strength": 1.2}, r"strength must be in \(0, 1\]"),
    ({"bucket_rule": "nearest"}, "bucket_rule 'nearest'; valid choices: paper, log"),
    ({"fstd": {"tile": 0}}, "tile must be an integer >= 1"),
    ({"fstd": {"size": 3}}, "method 'fstd' has no option size"),
    ({"fstd": 3}, "fstd must be a dict"),
    ({"arad_lora": "/nonexistent/lora.safetensors"}, "does not exist"),
    ({"arad_lora_scale": "x"}, "arad_lora_scale must be a number"),
    ({"lora": "x.safetensors"}, "method 'asd' has no option lora"),  # the run's LoRAs are generate(lora=...)
    ({"stride": 3}, "method 'asd' has no option stride"),
])
def test_asd_bad_options(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        create("asd", **options)


# ------------------------------------------------------------------------------------------ LoRA


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A random LoRA on the tiny SD 1.x U-Net's attention projections, saved the diffusers way."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from anysize.builders import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:  # gaussian init leaves B at zero: make the LoRA change the output
                torch.nn.init.normal_(p, std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    path = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path


def test_lora_applies_to_stage_one_only_and_is_removed(lora_dir):
    from anysize.builders import tiny_pipeline

    adapter = adapt(tiny_pipeline("sd1"))  # its own pipeline: the LoRA is loaded into it
    plain = gen(adapter).images
    with_lora = gen(adapter, method_options={"arad_lora": str(lora_dir)}).images
    assert not np.allclose(plain, with_lora, atol=1e-3)
    assert adapter.pipe.get_list_adapters() == {}  # removed after the run
    assert np.array_equal(gen(adapter).images, plain)  # and the model is as before
    # the same LoRA at weight 0 is the plain model
    zero = gen(adapter, method_options={"arad_lora": str(lora_dir), "arad_lora_scale": 0.0}).images
    assert np.abs(zero - plain).max() < 1e-5
    # at a non-native size stage I carries the LoRA and stage II does not: still different from plain
    big = gen(adapter, width=320, height=128, method_options={"arad_lora": str(lora_dir)}).images
    assert not np.allclose(big, gen(adapter, width=320, height=128).images, atol=1e-3)


def test_lora_that_cannot_be_read_is_a_clear_error_and_leaves_the_model(tmp_path):
    from anysize.builders import tiny_pipeline

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    adapter = adapt(tiny_pipeline("sd1"))
    plain = gen(adapter).images
    with pytest.raises(InvalidArgumentError, match="cannot load the LoRA"):
        gen(adapter, method_options={"arad_lora": str(bad)})
    assert np.array_equal(gen(adapter).images, plain)


def test_demo_row_is_quick(tiny):
    """asd at 16x area on the tiny model costs about one fstd pass at 16x area after its bucket pass."""
    adapter = adapt(tiny("sd1"))
    r = gen(adapter, width=512, height=512, steps=10, scheduler="ddim")
    # stage I: 10 steps at the 128x128 bucket (x2 CFG); stage II: 5 steps of 16 tiles (x2 CFG)
    assert r.network_calls == 10 * 2 + 5 * 16 * 2
    assert math.isfinite(float(np.abs(r.images).sum()))


def test_cli_generate_asd_with_lora(capsys, tmp_path, monkeypatch, lora_dir):
    from anysize import cli
    from anysize.output import read_metadata
    from anysize.builders import save_tiny_pipeline

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a cat", "--model", str(model), "--steps", "2", "--quiet", "--method", "asd"]
    assert cli.main(args + ["--size", "320x128", "--set", f"arad_lora={lora_dir}", "--out", "a.png"]) == 0
    meta = read_metadata(tmp_path / "a.png")
    assert meta["method"] == "asd" and meta["method_options"]["arad_lora"] == str(lora_dir) and meta["loras"] == []
    assert (meta["width"], meta["height"]) == (320, 128)
    capsys.readouterr()
    # --lora is the run's LoRA (both stages, any method), and goes with the ARAD LoRA of stage I
    assert cli.main(args + ["--size", "320x128", "--set", f"arad_lora={lora_dir}", "--lora", f"{lora_dir}:0.5",
                            "--out", "b.png"]) == 0
    meta = read_metadata(tmp_path / "b.png")
    assert meta["loras"][0]["scale"] == 0.5 and meta["method_options"]["arad_lora"] == str(lora_dir)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))

"""The shipped toy model: a real diffusers folder, SD 1.5's U-Net structure, and pictures the metric can read.

Loads ``anysize/toy/model`` through the real ``from_pretrained`` path (offline) and generates at the
native size; a couple of seconds on one CPU thread.
"""

import json

import pytest

import anysize
from anysize.defaults import SHIPPED_MODEL, default_model_path
from anysize.toy.composition import analyse

SD15_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD15_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


@pytest.fixture(scope="module")
def toy():
    return anysize.load(None)


def test_shipped_folder_is_small_safetensors_only():
    assert default_model_path() == SHIPPED_MODEL
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    index = json.loads((SHIPPED_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    defaults = json.loads((SHIPPED_MODEL / "anysize.json").read_text())
    assert defaults["default_steps"] > 0 and defaults["default_guidance"] > 1


def test_unet_has_sd15_block_structure(toy):
    cfg = toy.pipe.unet.config
    assert list(cfg.down_block_types) == SD15_DOWN and list(cfg.up_block_types) == SD15_UP
    assert cfg.mid_block_type in (None, "UNetMidBlock2DCrossAttn") and cfg.layers_per_block == 2
    assert cfg.sample_size >= 32 and toy.family == "sd1"
    assert toy.native_size == (128, 128) and toy.vae_factor == 4


@pytest.mark.parametrize("prompt, seed", [
    ("a red triangle on a blue background", 0),  # the demo's prompt and seed
    ("a yellow star on a blue background", 1),
])
def test_native_image_shows_one_prompted_object(toy, prompt, seed):
    result = anysize.generate(toy, prompt, seed=seed, progress=False)
    assert result.image.size == (128, 128)
    a = analyse(result.image, prompt, native_size=128)
    assert a.n_objects == 1 and a.colour_match and a.shape_match, a.to_dict()

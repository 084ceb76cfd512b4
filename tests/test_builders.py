"""Tests for anysize.builders: tiny offline tokenizers and random-weight pipelines of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anysize.errors import AnysizeError, InvalidArgumentError, UnknownChoiceError
from anysize.builders import (
    FAMILIES,
    save_tiny_pipeline,
    tiny_clip_tokenizer,
    tiny_pipeline,
    tiny_t5_tokenizer,
)

PROMPT = "a red triangle on a blue background"
LONG_PROMPT = ", ".join(["a highly detailed photograph of a small red house near a lake at sunset"] * 20)

EXPECTED_CLASSES = {
    "sd1": ("StableDiffusionPipeline", "UNet2DConditionModel", "PNDMScheduler"),
    "sd2": ("StableDiffusionPipeline", "UNet2DConditionModel", "DDIMScheduler"),
    "sdxl": ("StableDiffusionXLPipeline", "UNet2DConditionModel", "EulerDiscreteScheduler"),
    "sd3": ("StableDiffusion3Pipeline", "SD3Transformer2DModel", "FlowMatchEulerDiscreteScheduler"),
    "flux": ("FluxPipeline", "FluxTransformer2DModel", "FlowMatchEulerDiscreteScheduler"),
}


def _generate(pipe, prompt=PROMPT, *, height=128, width=128, steps=2):
    return pipe(
        prompt,
        num_inference_steps=steps,
        height=height,
        width=width,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


_PIPES: dict[str, object] = {}
_IMAGES: dict[str, np.ndarray] = {}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def pipe(family):
    if family not in _PIPES:
        _PIPES[family] = tiny_pipeline(family)
    return _PIPES[family]


@pytest.fixture
def image(family, pipe) -> np.ndarray:
    if family not in _IMAGES:
        _IMAGES[family] = _generate(pipe)
    return _IMAGES[family]


# ----------------------------------------------------------------------------------------------
# pipelines
# ----------------------------------------------------------------------------------------------


def test_families():
    assert FAMILIES == ("sd1", "sd2", "sdxl", "sd3", "flux")


def test_architecture(family, pipe):
    pipe_cls, denoiser_cls, scheduler_cls = EXPECTED_CLASSES[family]
    assert type(pipe).__name__ == pipe_cls
    assert type(_denoiser(pipe)).__name__ == denoiser_cls
    assert type(pipe.scheduler).__name__ == scheduler_cls
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert pipe.vae_scale_factor == 8
    assert len(pipe.vae.config.block_out_channels) == 4
    for name, module in _modules(pipe).items():
        for pname, param in module.named_parameters():
            assert param.dtype == torch.float32 and param.device.type == "cpu", (name, pname)
            assert param.any(), f"{name}.{pname} is all zeros"
        assert not module.training, name

    from transformers import CLIPTokenizer, T5TokenizerFast

    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    cfg = _denoiser(pipe).config
    if family in ("sd1", "sd2", "sdxl"):
        assert cfg.sample_size == 16 and cfg.in_channels == 4
        assert cfg.cross_attention_dim == pipe.text_encoder.config.hidden_size + (
            pipe.text_encoder_2.config.hidden_size if family == "sdxl" else 0
        )
        assert pipe.vae.config.latent_channels == 4
    if family == "sd1":
        assert tuple(cfg.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        assert not cfg.use_linear_projection
        assert pipe.text_encoder.config.hidden_act == "quick_gelu"
        assert pipe.scheduler.config.skip_prk_steps and pipe.scheduler.config.steps_offset == 1
        assert pipe.vae.config.scaling_factor == 0.18215
    if family == "sd2":
        assert cfg.use_linear_projection and list(cfg.attention_head_dim) == [2, 4, 4, 4]
        assert pipe.text_encoder.config.hidden_act == "gelu"
        assert pipe.scheduler.config.clip_sample is False
    if family == "sdxl":
        assert cfg.addition_embed_type == "text_time"
        assert cfg.projection_class_embeddings_input_dim == (
            6 * cfg.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
        )
        assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
        assert isinstance(pipe.tokenizer_2, CLIPTokenizer)
        assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
        assert pipe.scheduler.config.timestep_spacing == "leading"
        assert pipe.watermark is None
    if family == "sd3":
        assert cfg.sample_size == 16 and cfg.patch_size == 2 and cfg.in_channels == 16
        assert cfg.joint_attention_dim == pipe.text_encoder_3.config.d_model
        clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert clip_width <= cfg.joint_attention_dim  # CLIP features are padded up to the T5 width
        assert cfg.pooled_projection_dim == (
            pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        )
        assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
        assert isinstance(pipe.tokenizer_3, T5TokenizerFast)
        assert pipe.scheduler.config.shift == 3.0
    if family == "flux":
        assert cfg.in_channels == 64 and cfg.guidance_embeds is True
        assert sum(cfg.axes_dims_rope) == cfg.attention_head_dim
        assert cfg.joint_attention_dim == pipe.text_encoder_2.config.d_model
        assert cfg.pooled_projection_dim == pipe.text_encoder.config.hidden_size
        assert isinstance(pipe.tokenizer_2, T5TokenizerFast)
        assert pipe.scheduler.config.use_dynamic_shifting
    if family in ("sd3", "flux"):
        assert pipe.vae.config.latent_channels == 16
        assert pipe.vae.config.shift_factor is not None
        assert not pipe.vae.config.use_quant_conv and not pipe.vae.config.use_post_quant_conv


def test_generate(pipe, image):
    assert image.shape == (1, 128, 128, 3)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.std() > 1e-3 and len(np.unique(image)) > 100
    # a second call with the same generator is bit-identical
    np.testing.assert_array_equal(_generate(pipe), image)


def test_prompt_changes_output(pipe, image):
    for other in ("a cat sitting on a wooden table", "", LONG_PROMPT):  # long: truncated by the pipeline
        out = _generate(pipe, other)
        assert out.shape == image.shape and np.isfinite(out).all()
        assert np.abs(out - image).max() > 1e-4, other


def test_non_square(pipe):
    for height, width in ((256, 128), (128, 256)):
        out = _generate(pipe, height=height, width=width)
        assert out.shape == (1, height, width, 3)
        assert np.isfinite(out).all() and out.std() > 1e-3


def test_deterministic_and_rng_untouched(family, pipe, image):
    state = torch.get_rng_state()
    again = tiny_pipeline(family, seed=0)
    other = tiny_pipeline(family, seed=1)
    assert torch.equal(torch.get_rng_state(), state)

    for name, module in _modules(pipe).items():
        assert _state_dicts_equal(module, _modules(again)[name]), name
    assert not _state_dicts_equal(_denoiser(pipe), _denoiser(other))
    assert not _state_dicts_equal(pipe.text_encoder, other.text_encoder)
    np.testing.assert_array_equal(_generate(again), image)
    assert np.abs(_generate(other) - image).max() > 1e-4


def _denoiser_call(pipe, family, *, t: float = 500.0, cond_seed: int = 0, guidance: float = 3.5):
    """One direct forward pass of the UNet / transformer with random conditioning of the right shapes."""
    model = _denoiser(pipe)
    cfg = model.config
    x = torch.randn(1, 4 if family in ("sd1", "sd2", "sdxl") else 16, 16, 16, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(cond_seed)
    with torch.no_grad():
        if family in ("sd1", "sd2", "sdxl"):
            kwargs = {}
            if family == "sdxl":
                kwargs["added_cond_kwargs"] = {
                    "text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=g),
                    "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]),
                }
            emb = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
            return model(x, torch.tensor([t]), encoder_hidden_states=emb, **kwargs).sample
        emb = torch.randn(1, 20, cfg.joint_attention_dim, generator=g)
        pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
        if family == "sd3":
            return model(
                hidden_states=x, encoder_hidden_states=emb, pooled_projections=pooled, timestep=torch.tensor([t])
            ).sample
        # flux: pack 16x16x16 latents into 8x8 tokens of 64 channels, as FluxPipeline does
        packed = x.view(1, 16, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 64, 64)
        img_ids = torch.zeros(8, 8, 3)
        img_ids[..., 1] = torch.arange(8)[:, None]
        img_ids[..., 2] = torch.arange(8)[None, :]
        return model(
            hidden_states=packed,
            encoder_hidden_states=emb,
            pooled_projections=pooled,
            timestep=torch.tensor([t / 1000]),
            img_ids=img_ids.reshape(64, 3),
            txt_ids=torch.zeros(20, 3),
            guidance=torch.tensor([guidance]) if cfg.guidance_embeds else None,
        ).sample


def test_denoiser_depends_on_timestep_and_conditioning(family, pipe):
    base = _denoiser_call(pipe, family)
    assert torch.isfinite(base).all() and base.std() > 1e-4
    assert (base - _denoiser_call(pipe, family, t=100.0)).abs().max() > 1e-4
    assert (base - _denoiser_call(pipe, family, cond_seed=1)).abs().max() > 1e-4
    if family == "flux":
        assert (base - _denoiser_call(pipe, family, guidance=1.0)).abs().max() > 1e-4


def test_save_and_reload(family, image, tmp_path):
    from diffusers import DiffusionPipeline

    path = save_tiny_pipeline(family, tmp_path / family)
    assert path == tmp_path / family and (path / "model_index.json").is_file()
    assert list(path.rglob("*.safetensors")) and not list(path.rglob("*.bin"))

    loaded = DiffusionPipeline.from_pretrained(path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == EXPECTED_CLASSES[family][0]
    assert type(loaded.tokenizer).__name__ == "CLIPTokenizer"

    built = tiny_pipeline(family)
    for name, module in _modules(built).items():
        assert type(loaded.components[name]) is type(module), name
        assert _state_dicts_equal(module, loaded.components[name]), name
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(built.scheduler.config)

    out = _generate(loaded)
    # Same weights bit for bit; outputs may still differ in the last float32 ulp because the
    # loaded tensors are not 64-byte aligned, which changes the CPU kernels' summation order.
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-5)


def test_unknown_family():
    with pytest.raises(UnknownChoiceError) as info:
        tiny_pipeline("sd4")
    assert isinstance(info.value, AnysizeError) and isinstance(info.value, ValueError)
    assert info.value.kind == "family" and info.value.value == "sd4"
    assert set(info.value.choices) == set(FAMILIES)
    with pytest.raises(UnknownChoiceError):
        save_tiny_pipeline("nope", "/nonexistent/never/created")


def test_sd2_prediction_type():
    assert tiny_pipeline("sd2").scheduler.config.prediction_type == "v_prediction"
    assert tiny_pipeline("sd2", prediction_type="epsilon").scheduler.config.prediction_type == "epsilon"
    assert tiny_pipeline("sd1").scheduler.config.prediction_type == "epsilon"
    assert tiny_pipeline("sdxl", prediction_type="v_prediction").scheduler.config.prediction_type == "v_prediction"


def test_bad_prediction_type():
    with pytest.raises(UnknownChoiceError):
        tiny_pipeline("sd1", prediction_type="noise")
    with pytest.raises(InvalidArgumentError):
        tiny_pipeline("flux", prediction_type="epsilon")


def test_flux_schnell_like():
    pipe = tiny_pipeline("flux", guidance_embeds=False)
    assert pipe.transformer.config.guidance_embeds is False
    out = pipe(PROMPT, num_inference_steps=2, height=128, width=128, guidance_scale=0.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 128, 128, 3) and np.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------


def test_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    tok = tiny_clip_tokenizer()
    assert isinstance(tok, CLIPTokenizer)
    assert 300 <= len(tok) <= 1000 and tok.model_max_length == 77
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id]) == ["<|startoftext|>", "<|endoftext|>"]
    assert tok.eos_token_id == len(tok) - 1 and tok.pad_token == "<|endoftext|>"
    assert tiny_clip_tokenizer(pad_token="!").pad_token == "!"

    for prompt in (PROMPT, "", "Ünïcödé, émojis 🎨 & digits 1234!", LONG_PROMPT):
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids
        assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(tok(PROMPT).input_ids, skip_special_tokens=True) == PROMPT

    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(again) == len(tok) and again.model_max_length == 77 and again.pad_token_id == tok.pad_token_id
    for prompt in (PROMPT, "", LONG_PROMPT):
        assert again(prompt).input_ids == tok(prompt).input_ids


def test_t5_tokenizer(tmp_path):
    from transformers import T5TokenizerFast

    tok = tiny_t5_tokenizer()
    assert isinstance(tok, T5TokenizerFast)
    assert 100 <= len(tok) <= 1000 and tok.model_max_length == 512
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]

    for prompt in (PROMPT, "", "Ünïcödé, émojis 🎨 & digits 1234!", LONG_PROMPT):
        ids = tok(prompt, padding="max_length", max_length=256, truncation=True).input_ids
        assert len(ids) == 256 and 1 in ids and all(0 <= i < len(tok) for i in ids)
    assert tok("").input_ids == [1]
    assert tok.decode(tok(PROMPT).input_ids, skip_special_tokens=True) == PROMPT

    tok.save_pretrained(tmp_path)
    again = T5TokenizerFast.from_pretrained(tmp_path)
    assert len(again) == len(tok) and again.model_max_length == 512
    for prompt in (PROMPT, "", LONG_PROMPT):
        assert again(prompt).input_ids == tok(prompt).input_ids


# ----------------------------------------------------------------------------------------------
# one builder per family, three profiles
# ----------------------------------------------------------------------------------------------


def test_build_pipeline_tiny_is_tiny_pipeline_and_knows_the_release_names():
    from anysize.builders import ALIASES, build_pipeline

    for alias, family in ALIASES.items():
        built, tiny = build_pipeline(alias, seed=3), tiny_pipeline(family, seed=3)
        assert type(built) is type(tiny)
        for name, module in _modules(tiny).items():
            assert _state_dicts_equal(module, _modules(built)[name]), (alias, name)


def test_build_pipeline_profiles():
    from anysize.builders import PROFILES, build_pipeline

    assert PROFILES == ("tiny", "reduced", "full")
    with pytest.raises(UnknownChoiceError, match="unknown profile 'huge'"):
        build_pipeline("sd1", "huge")
    with pytest.raises(UnknownChoiceError, match="unknown family 'sd9'"):
        build_pipeline("sd9", "full", device="meta")
    reduced, full = (build_pipeline("sdxl", p, device="meta").unet.config for p in ("reduced", "full"))
    assert reduced.block_out_channels == full.block_out_channels == (320, 640, 1280)
    assert (reduced.layers_per_block, full.layers_per_block) == (1, 2)
    pipe = build_pipeline("sd2", "reduced", device="meta", prediction_type="epsilon")
    assert pipe.scheduler.config.prediction_type == "epsilon"

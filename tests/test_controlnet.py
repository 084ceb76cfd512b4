"""ControlNet inside every method: parity with diffusers' ControlNet pipelines at the native size,
the control every network call gets (the crop / view of the resized control image at its place),
stages at their own size, the upscale tile control, bad input, metadata and batch rows."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import anysize
from anysize import api
from anysize.builders.controlnet import tiny_controlnet
from anysize.errors import InvalidArgumentError
from anysize.methods import create
from anysize.models import adapt
from anysize.sampling import StepContext

STEPS = 3


@pytest.fixture(scope="module")
def nets(tiny):
    cache = {}

    def get(family, seed=1, union=False):
        key = (family, seed, union)
        if key not in cache:
            cache[key] = tiny_controlnet(tiny(family), seed=seed, union=union)
        return cache[key]

    return get


def noise_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def gen(pipe, control, method="direct", **kw):
    kw.setdefault("steps", STEPS)
    return anysize.generate(pipe, "a cat", seed=0, method=method, control=control, output_type="latent",
                            progress=False, **kw).latents


# ------------------------------------------------------------------------------------------ parity


def test_sd1_two_controlnets_with_scale_start_end_equal_diffusers(tiny, nets):
    import diffusers

    pipe = tiny("sd1")
    a, b = nets("sd1", 1), nets("sd1", 2)
    ia, ib = noise_image(160, 96, 0), noise_image(128, 128, 1)
    ref_pipe = diffusers.StableDiffusionControlNetPipeline(**pipe.components, controlnet=[a, b])
    ref_pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_pipe("a cat", image=[ia, ib], height=128, width=128, num_inference_steps=STEPS,
                       generator=torch.Generator().manual_seed(0), output_type="latent",
                       controlnet_conditioning_scale=[0.7, 1.3], control_guidance_start=[0.0, 0.34],
                       control_guidance_end=[0.67, 1.0]).images
    control = [anysize.Control(a, ia, 0.7, 0.0, 0.67), anysize.Control(b, ib, 1.3, 0.34, 1.0)]
    plain = gen(pipe, None)
    assert (plain - ref).abs().max() > 1e-2  # the controls matter
    for method in ("direct", "multidiffusion", "fstd"):
        assert (gen(pipe, control, method) - ref).abs().max() <= 1e-4, method


@pytest.mark.parametrize("guess_mode", [False, True])
def test_sdxl_controlnet_equals_diffusers(tiny, nets, guess_mode):
    import diffusers

    pipe = tiny("sdxl")
    net = nets("sdxl")
    image = noise_image(128, 128, 3)
    ref_pipe = diffusers.StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=net)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe("a cat", image=image, height=128, width=128, num_inference_steps=2, guess_mode=guess_mode,
                   generator=torch.Generator().manual_seed(0), output_type="latent",
                   controlnet_conditioning_scale=0.9).images
    got = anysize.generate(pipe, "a cat", seed=0, steps=2, control=anysize.Control(net, image, 0.9),
                           control_guess_mode=guess_mode, output_type="latent", progress=False).latents
    assert (got - ref).abs().max() <= 1e-4


@pytest.fixture
def posterior_mean(monkeypatch):
    """The DiT pipelines encode the control image with a posterior *sample* (SD3's from the global
    RNG); anysize takes the mean (deterministic, no RNG): compare with the pipelines on the mean."""
    from diffusers.models.autoencoders import vae

    monkeypatch.setattr(vae.DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_dit_controlnets_equal_diffusers(tiny, nets, family, posterior_mean):
    import diffusers

    pipe, net = tiny(family), nets(family)
    image = noise_image(128, 128, 5)
    cls = diffusers.FluxControlNetPipeline if family == "flux" else diffusers.StableDiffusion3ControlNetPipeline
    ref_pipe = cls(**pipe.components, controlnet=net)
    ref_pipe.set_progress_bar_config(disable=True)
    adapter = adapt(pipe)
    ref = ref_pipe("a cat", control_image=image, num_inference_steps=2, height=128, width=128,
                   guidance_scale=adapter.default_guidance, generator=torch.Generator().manual_seed(0),
                   output_type="latent", controlnet_conditioning_scale=0.8).images
    if family == "flux":
        ref = adapter.unpack(ref, 16, 16)
    got = gen(pipe, anysize.Control(net, image, 0.8), steps=2, width=128, height=128)
    assert (got - gen(pipe, None, steps=2, width=128, height=128) - 0).abs().max() > 1e-2
    assert (got - ref).abs().max() <= 1e-4


def _diffusers_reference(family, pipe, net, image, steps, scale, end):
    import diffusers

    cls = {"sd1": diffusers.StableDiffusionControlNetPipeline, "sdxl": diffusers.StableDiffusionXLControlNetPipeline,
           "flux": diffusers.FluxControlNetPipeline, "sd3": diffusers.StableDiffusion3ControlNetPipeline}[family]
    ref_pipe = cls(**pipe.components, controlnet=net)
    ref_pipe.set_progress_bar_config(disable=True)
    adapter = adapt(pipe)
    kw = {"control_image": image} if family in ("flux", "sd3") else {"image": image}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_pipe("a cat", num_inference_steps=steps, height=128, width=128, guidance_scale=adapter.default_guidance,
                       generator=torch.Generator().manual_seed(0), output_type="latent",
                       controlnet_conditioning_scale=scale, control_guidance_end=end, **kw).images
    return adapter.unpack(ref, 16, 16) if family == "flux" else ref


@pytest.mark.parametrize("name", sorted(__import__("anysize.methods", fromlist=["names"]).names()))
def test_every_method_with_a_controlnet_equals_diffusers_at_the_native_size(tiny, nets, name, posterior_mean):
    """The registry, whole: every method at the native size (its native options) with a ControlNet is
    diffusers' ControlNet pipeline of the family (sd1, or the method's first family)."""
    from anysize import methods

    cls = methods.get(name)
    family = "sd1" if not cls.families or "sd1" in cls.families else cls.families[0]
    pipe, net = tiny(family), nets(family)
    image = noise_image(128, 128, 7)
    ref = _diffusers_reference(family, pipe, net, image, STEPS, 0.8, 0.67)
    got = gen(pipe, anysize.Control(net, image, 0.8, 0.0, 0.67), name, width=128, height=128,
              method_options=cls.native_options or None)
    assert (got - ref).abs().max() <= 1e-4


def test_sd3_windows_get_the_crop_of_the_encoded_control(tiny, nets):
    from diffusers.image_processor import VaeImageProcessor

    pipe, net = tiny("sd3"), nets("sd3")
    image = noise_image(90, 50, 7)
    seen, handle = record_controls(net)
    try:
        gen(pipe, anysize.Control(net, image), "multidiffusion", steps=1, width=256, height=128,
            method_options={"stride": 8})
    finally:
        handle.remove()
    pixels = VaeImageProcessor(vae_scale_factor=16).preprocess(image, height=128, width=256)
    cfg = pipe.vae.config
    shift = 0.0 if net.config.force_zeros_for_pooled_projection else cfg.shift_factor  # InstantX style: no shift
    canvas = (pipe.vae.encode(pixels).latent_dist.mean - shift) * cfg.scaling_factor
    assert len(seen) >= 3 and all(c.shape[-2:] == (16, 16) for _, c in seen)
    assert all(crops_of(canvas, c, f=1, atol=1e-5) for _, c in seen)  # adding the shift back rounds
    offsets = {int((c[0] - canvas[0, :, :, :16]).abs().max() < 1e-5) for _, c in seen}
    assert offsets == {0, 1}  # not all the same crop


# ------------------------------------------------------------------------------------------ what every call sees


def coordinate_image(h, w, f):
    """An (h·f)×(w·f) px image whose f×f block of latent pixel (y, x) is (4(y+1), 4(x+1), 200)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rgb = np.stack([4 * (ys + 1), 4 * (xs + 1), np.full_like(ys, 200)], -1).astype(np.uint8)
    return Image.fromarray(np.kron(rgb, np.ones((f, f, 1), dtype=np.uint8)))


def decode_control(c, f):
    """(N, h, w, 2) latent (y+1, x+1) of every input pixel from the control it got (0: padding)."""
    blocks = c[:, :, ::f, ::f] * 255  # every f×f block is constant
    assert torch.equal(c, blocks.repeat_interleave(f, -2).repeat_interleave(f, -1) / 255)
    pad = blocks[:, 2] < 100
    yx = torch.stack([blocks[:, 0], blocks[:, 1]], -1) / 4
    yx[pad] = 0
    return yx.round().long()


def record_controls(net):
    seen = []

    def hook(module, args, kwargs):
        cond = kwargs["controlnet_cond"]
        x = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        seen.append((x.detach().clone(), cond.detach().clone()))

    return seen, net.register_forward_pre_hook(hook, with_kwargs=True)


def step_context(pipe, net, method, h, w, control_image):
    adapter = adapt(pipe, native_size=16)
    settings = api._settings(adapter, 1, STEPS, None, 0, None, "auto", "latent")
    controls = api._controls(adapter, anysize.Control(net, control_image), False)
    request = api._request(adapter, ["a cat"], None, h * 8, w * 8, settings, None, None, False, controls)
    scheduler = request.make_scheduler()
    timesteps = adapter.set_timesteps(scheduler, STEPS, (h, w))
    ctx = StepContext(adapter, scheduler, request.cond, timesteps, 1, request.generators[0], {}, tuple(request.seeds))
    return adapter, request, ctx


def coordinate_latents(h, w):
    """Latents whose channels 0 and 1 are the (y+1, x+1) of every pixel (2, 3: zero)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 1.0, torch.arange(w) + 1.0, indexing="ij")
    return torch.stack([ys, xs, torch.zeros(h, w), torch.zeros(h, w)])[None]


def check_calls(seen, exact_padding=True):
    """Every call's control is the block under the canvas pixel its input came from."""
    assert seen
    for x, c in seen:
        from_control = decode_control(c, 8)
        from_input = torch.stack([x[:, 0], x[:, 1]], -1).round().long()
        real = from_control[..., 0] > 0
        assert real.any()
        assert torch.equal(from_control[real], from_input[real])
        if exact_padding:  # zero-padded inputs: no control in the padding, and nowhere else
            assert torch.equal(real, from_input[..., 0] > 0)


@pytest.mark.parametrize("name, options", [
    ("direct", {}), ("multidiffusion", {"stride": 4}), ("multidiffusion", {"stride": 8, "circular": True}),
    ("fstd", {"offset_range": 8}), ("elastic", {"resampling_steps": 2, "new_p": 0.5, "patch_size": 8}),
])
def test_every_call_gets_the_control_under_its_pixels(tiny, nets, name, options):
    pipe, net = tiny("sd1"), nets("sd1")
    h, w = 24, 40
    method = create(name, **options)
    adapter, request, ctx = step_context(pipe, net, method, h, w, coordinate_image(h, w, 8))
    seen, handle = record_controls(net)
    try:
        x = coordinate_latents(h, w)
        if name == "fstd":
            for ctx.index in (0, 1):  # the unshifted, then a shifted grid
                method.step(ctx, x)
        else:
            method.predict(ctx, x)
    finally:
        handle.remove()
    check_calls(seen, exact_padding=name != "elastic")  # elastic pads with a noised background
    if name == "elastic":  # the reference rows saw picked pixels, not a crop: their map is not contiguous
        assert any(decode_control(c, 8)[0, :, :, 0].unique().numel() < decode_control(c, 8).shape[1] for _, c in seen)


def test_demofusion_local_and_dilated_views_get_their_pixels_control(tiny, nets):
    pipe, net = tiny("sd1"), nets("sd1")
    h, w = 32, 24
    method = create("demofusion")
    adapter, request, ctx = step_context(pipe, net, method, h, w, coordinate_image(h, w, 8))
    x = coordinate_latents(h, w)
    phase = method.phase(request, x, (h, w), [torch.Generator().manual_seed(5)])
    seen, handle = record_controls(net)
    try:
        method.local_views(ctx, x, phase)
        n_local = len(seen)
        method.dilated_views(ctx, x, 2, 1e-6)  # a vanishing blur: the sub-grids are exact picks
    finally:
        handle.remove()
    assert 0 < n_local < len(seen)
    check_calls(seen)
    dilated = decode_control(seen[-1][1], 8)[0]
    assert torch.equal(dilated[1:, :, 0] - dilated[:-1, :, 0], torch.full_like(dilated[1:, :, 0], 2))  # stride 2


def crops_of(canvas_image, control, strides=(1,), margin=0, f=8, atol=0.0):
    """Whether every sample of ``control`` (N, C, h·f, w·f) is a stride-s block grid of the canvas
    control (zero outside, up to ``margin`` latent px), for some s in ``strides`` and offset."""
    _, ch, hf, wf = canvas_image.shape
    H, W = hf // f, wf // f
    blocks = canvas_image[0].reshape(ch, H, f, W, f).permute(1, 3, 0, 2, 4)  # (H, W, C, f, f)
    blocks = torch.nn.functional.pad(blocks, (0, 0, 0, 0, 0, 0, margin, margin, margin, margin))
    for sample in control:
        h, w = sample.shape[-2] // f, sample.shape[-1] // f
        target = sample.reshape(ch, h, f, w, f).permute(1, 3, 0, 2, 4)
        found = False
        for s in strides:
            for oy in range(blocks.shape[0] - (h - 1) * s):
                for ox in range(blocks.shape[1] - (w - 1) * s):
                    part = blocks[oy : oy + (h - 1) * s + 1 : s, ox : ox + (w - 1) * s + 1 : s]
                    if torch.equal(part, target) if not atol else torch.allclose(part, target, rtol=0, atol=atol):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        if not found:
            return False
    return True


@pytest.mark.parametrize("name", ["scalediff", "asd", "demofusion"])
def test_each_stage_gets_the_original_image_resized_to_its_canvas(tiny, nets, name):
    pipe, net = tiny("sd1"), nets("sd1")
    adapter = adapt(pipe, native_size=16)
    image = noise_image(100, 70, 4)
    seen, handle = record_controls(net)
    try:
        anysize.generate(adapter, "a cat", width=256, height=192, steps=2, seed=0, method=name,
                         control=anysize.Control(net, image), output_type="latent", progress=False)
    finally:
        handle.remove()
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    sizes = {tuple(x.shape[-2:]) for x, _ in seen} | {(24, 32)}
    canvases, matched = {}, set()
    for x, c in seen:
        for (h, w) in sorted(sizes, reverse=True):
            if (h, w) not in canvases:
                canvases[(h, w)] = processor.preprocess(image, height=h * 8, width=w * 8).float()
            if crops_of(canvases[(h, w)], c, strides=(1, 2) if name == "demofusion" else (1,),
                        margin=4 if name == "demofusion" else 0):
                matched.add((h, w))
                break
        else:
            raise AssertionError(f"a call of shape {tuple(x.shape)} got a control that is no view of any stage's canvas")
    assert len(matched) >= 2 and (24, 32) in matched  # several stages, the last at the requested size


def test_upscale_tile_control_is_the_resized_source_under_every_tile(tiny, nets):
    from diffusers.image_processor import VaeImageProcessor

    pipe, net = tiny("sd1"), nets("sd1")
    source = noise_image(80, 60, 6)
    seen, handle = record_controls(net)
    try:
        result = anysize.upscale(pipe, source, size=(256, 192), method="fstd", steps=4, strength=0.5, seed=0,
                                 control=anysize.Control(net, scale=0.5), output_type="latent", progress=False)
    finally:
        handle.remove()
    resized = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False).preprocess(
        source, height=192, width=256).float()
    assert sum(c.shape[0] for _, c in seen) >= 2 * 4 and all(c.shape[-2:] == (128, 128) for _, c in seen)  # 2 steps
    assert all(crops_of(resized, c) for _, c in seen)
    assert result.config["controls"][0]["image"] == "(the source image)"


@pytest.mark.parametrize("name", ["direct", "multidiffusion", "fstd", "elastic", "demofusion"])
def test_controls_make_no_host_wait_per_step(tiny, nets, name):
    from anysize.testing.syncs import audit_sampling

    pipe, net = tiny("sd1"), nets("sd1")
    control = [anysize.Control(net, noise_image(64, 64), 0.8, 0.0, 0.5), anysize.Control(net, noise_image(32, 32))]
    options = {"elastic": {"resampling_steps": 1}}.get(name, {})
    counts = {}
    for steps in (2, 4):
        with audit_sampling() as audits:
            gen(pipe, control, name, steps=steps, width=192, height=128, method_options=options)
        counts[steps] = sum(len(a.events) for a in audits)
    assert counts[4] == counts[2], "\n".join(a.report() for a in audits)


def test_hidiffusion_raunet_gets_residuals_resized_to_its_feature_sizes(tiny, nets, monkeypatch):
    from anysize.models import control_pixels

    pipe, net = tiny("sd1"), nets("sd1")
    control = anysize.Control(net, noise_image(64, 64))
    resized = []
    original = control_pixels.FittingResidual.__radd__

    def radd(self, feature):
        resized.append(self.residual.shape[-2:] != feature.shape[-2:])
        return original(self, feature)

    monkeypatch.setattr(control_pixels.FittingResidual, "__radd__", radd)
    got = gen(pipe, control, "hidiffusion", width=256, height=256)
    assert torch.isfinite(got).all() and any(resized)  # RAU-Net's phases shrank some features
    assert (got - gen(pipe, None, "hidiffusion", width=256, height=256)).abs().max() > 1e-3
    resized.clear()
    gen(pipe, control, "hidiffusion", width=256, height=256, method_options={"raunet": False})
    assert resized and not any(resized)  # without RAU-Net every residual fits as it is


# ------------------------------------------------------------------------------------------ bad input


def test_bad_controls_get_clear_one_line_errors(tiny, nets, tmp_path):
    pipe = tiny("sd1")
    net, image = nets("sd1"), noise_image(64, 64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    cases = [
        (anysize.Control(net, str(tmp_path / "missing.png")), "cannot read the control image"),
        (anysize.Control(net, str(broken)), "broken.png"),
        (anysize.Control(net, 42), "must be a PIL image or an image file"),
        (anysize.Control(net, image, scale=-0.5), "scale must be >= 0"),
        (anysize.Control(net, image, start=0.5, end=0.5), "start 0.5 must be below end 0.5"),
        (anysize.Control(net, image, end=1.5), "end must be in \\[0, 1\\]"),
        (anysize.Control(nets("sdxl"), image), "is a sdxl ControlNet .* cannot control the sd1 model"),
        (anysize.Control(pipe.unet, image), "must be a diffusers ControlNet"),
        (anysize.Control(net, image, mode=3), "a control mode goes with a Union ControlNet"),
        (anysize.Control(str(tmp_path / "nowhere"), image), "cannot load the ControlNet"),
        ("canny.safetensors", "must be an anysize.Control"),
    ]
    for control, message in cases:
        with pytest.raises(InvalidArgumentError, match=message) as info:
            gen(pipe, control, steps=1)
        assert "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="needs a control mode"):
        gen(tiny("sdxl"), anysize.Control(nets("sdxl", union=True), image), steps=1)


def test_union_controlnet_runs_with_its_mode(tiny, nets):
    pipe, net = tiny("sdxl"), nets("sdxl", union=True)
    image = noise_image(128, 128, 2)
    a = gen(pipe, anysize.Control(net, image, mode="canny"), steps=2)
    b = gen(pipe, anysize.Control(net, image, mode="depth"), steps=2)
    assert (a - b).abs().max() > 1e-4  # the mode reaches the network
    assert (gen(pipe, anysize.Control(net, image, mode=3), steps=2) - a).abs().max() == 0


def test_sdxl_union_controlnet_equals_diffusers(tiny, nets):
    import diffusers

    pipe, net = tiny("sdxl"), nets("sdxl", union=True)
    image = noise_image(128, 128, 8)
    ref_pipe = diffusers.StableDiffusionXLControlNetUnionPipeline(**pipe.components, controlnet=net)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe("a cat", control_image=[image], control_mode=[3], height=128, width=128, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="latent",
                   controlnet_conditioning_scale=0.7).images
    assert (gen(pipe, anysize.Control(net, image, 0.7, mode="canny"), steps=2) - ref).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------------ front ends


def test_regions_with_a_controlnet(tiny, nets):
    """Regional prompts and a ControlNet in one run: the regions' own prompt rows carry the control too."""
    from anysize.regions import parse_region

    pipe, image = tiny("sd1"), noise_image(128, 128, 3)
    regions = [parse_region("0,0,64,128:a dog")]
    plain = gen(pipe, None, "multidiffusion", regions=regions)
    controlled = gen(pipe, anysize.Control(nets("sd1"), image), "multidiffusion", regions=regions)
    assert (controlled - plain).abs().max() > 1e-3
    off = gen(pipe, anysize.Control(nets("sd1"), image, scale=0.0), "multidiffusion", regions=regions)
    torch.testing.assert_close(off, plain, atol=1e-5, rtol=0)


def test_metadata_round_trip_names_every_control(tiny, nets, tmp_path):
    from anysize.output import read_metadata, read_parameters

    pipe, net = tiny("sd1"), nets("sd1")
    folder = tmp_path / "cn"
    net.save_pretrained(folder)
    image_file = tmp_path / "edges.png"
    noise_image(64, 48).save(image_file)
    result = anysize.generate(pipe, "a cat", steps=1, seed=0, progress=False,
                              control=[anysize.Control(str(folder), str(image_file), 0.5, 0.25, 0.75)])
    path = result.save(tmp_path / "out.png")
    controls = read_metadata(path)["controls"]
    import hashlib

    assert controls == [{"model": str(folder), "image": "edges.png",
                         "image_sha256": hashlib.sha256(image_file.read_bytes()).hexdigest(),
                         "image_size": [64, 48], "scale": 0.5, "start": 0.25, "end": 0.75}]
    assert f"ControlNet 0: \"Model: {folder}, Image: edges.png, Weight: 0.5" in read_parameters(path)


def test_cli_generate_and_upscale_with_controlnets(tiny, nets, tmp_path, capsys, monkeypatch):
    from anysize import cli
    from anysize.builders import save_tiny_pipeline
    from anysize.output import read_metadata

    monkeypatch.chdir(tmp_path)
    model = save_tiny_pipeline("sd1", tmp_path / "model")
    folder = tmp_path / "cn"
    nets("sd1").save_pretrained(folder)
    noise_image(64, 64).save(tmp_path / "c.png")
    base = ["--model", model, "--steps", "2", "--quiet", "--force"]

    def run(*args):
        rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = run("generate", "a cat", "--size", "192x128", "--method", "multidiffusion", "--controlnet", folder,
                       "--control-image", "c.png", "--controlnet", folder, "--control-image", "c.png",
                       "--control-scale", "0.5", "--control-scale", "2", "--control-end", "0.5",
                       "--control-end", "1", "--out", "g.png", *base)
    assert rc == 0, err
    got = read_metadata("g.png")["controls"]
    assert [(c["scale"], c["end"]) for c in got] == [(0.5, 0.5), (2.0, 1.0)]

    rc, out, err = run("upscale", "g.png", "--scale", "1.5", "--controlnet", folder, "--out", "u.png",
                       "--strength", "0.5", *base)
    assert rc == 0, err
    assert read_metadata("u.png")["controls"][0]["image"] == "(the source image)"

    for args, message in [
        (["--controlnet", folder], "0 --control-image for 1 --controlnet"),
        (["--controlnet", folder, "--control-image", "c.png", "--control-image", "c.png"], "2 --control-image"),
        (["--control-image", "c.png"], "--control-image goes with --controlnet"),
        (["--controlnet", folder, "--control-image", "nope.png"], "no such file"),
        (["--controlnet", folder, "--control-image", "c.png", "--control-start", "0.7", "--control-end", "0.2"],
         "must be below"),
    ]:
        rc, out, err = run("generate", "a cat", "--out", "x.png", *base, *args)
        assert rc == 2 and message in err, err


def test_batch_rows_parse_control(tmp_path, monkeypatch):
    import hashlib

    from anysize.batching import jobs as J

    monkeypatch.chdir(tmp_path)
    noise_image(16, 16).save("e.png")
    digest = hashlib.sha256((tmp_path / "e.png").read_bytes()).hexdigest()
    rows, _ = J.rows_from_dicts([
        {"prompt": "a", "control": [{"model": "cn", "image": "e.png", "scale": 0.5}]},
        {"prompt": "b"},
        {"prompt": "c", "control": [{"model": "cn", "image": "e.png", "start": 0.6, "end": 0.3}]},
        {"prompt": "d", "control": [{"model": "cn"}]},
        {"prompt": "e", "control": [{"model": "cn", "image": "e.png", "weight": 1}]},
        {"prompt": "f", "control": [{"model": "cn", "image": "missing.png"}]},
    ])
    jobs, errors = J.parse(rows)
    assert jobs[0].control == [{"model": "cn", "image": "e.png", "scale": 0.5, "start": 0.0, "end": 1.0,
                                "image_sha256": digest}]
    assert jobs[1].control is None and "control" not in jobs[1].spec()
    assert jobs[0].config_key() != jobs[1].config_key()  # different controls never share a call
    assert [e.row for e in errors] == [3, 4, 5, 6]
    assert "cannot read the control image missing.png" in errors[3].message
    assert "start 0.6 must be below end 0.3" in errors[0].message
    assert "image must be a path" in errors[1].message and "unknown key 'weight'" in errors[2].message


def test_batch_job_with_control_runs_and_records_it(tiny, nets, tmp_path, monkeypatch):
    import json

    from anysize.output import read_metadata

    monkeypatch.chdir(tmp_path)
    nets("sd1").save_pretrained("cn")
    noise_image(32, 32).save("e.png")
    jobs = [{"id": "with", "prompt": "a cat", "steps": 1, "control": [{"model": "cn", "image": "e.png", "scale": 0.5}]},
            {"id": "without", "prompt": "a cat", "steps": 1}]
    anysize.batch(tiny("sd1"), jobs, tmp_path / "out", batch_size=2, progress=False, fail_fast=True)
    assert read_metadata(tmp_path / "out" / "with.png")["controls"][0]["scale"] == 0.5
    assert "controls" not in read_metadata(tmp_path / "out" / "without.png")
    assert json.loads((tmp_path / "out" / "with.json").read_text())


def test_controls_are_run_state_batch_equals_alone_and_two_threads_share_one_adapter(tiny, nets):
    import threading

    pipe, net = tiny("sd1"), nets("sd1")
    adapter = adapt(pipe)
    method = create("fstd")
    controls = [anysize.Control(net, noise_image(64, 64, 11)), anysize.Control(net, noise_image(64, 64, 12), 1.5)]

    def one(control, prompt="a cat", seed=0):
        return anysize.generate(adapter, prompt, width=192, height=128, steps=2, seed=seed, method=method,
                                control=control, output_type="latent", progress=False).latents

    alone = [one(controls[0]), one(controls[1], "a dog", 3)]
    both = anysize.generate(adapter, ["a cat", "a cat"], width=192, height=128, steps=2, seed=[0, 7], method=method,
                            control=controls[0], output_type="latent", progress=False).latents
    assert (both[:1] - alone[0]).abs().max() <= 1e-4  # batched kernels round differently
    assert (both[1:] - one(controls[0], seed=7)).abs().max() <= 1e-4

    results, start = [None, None], threading.Barrier(2)

    def worker(i, *args):
        start.wait()
        results[i] = one(*args)

    threads = [threading.Thread(target=worker, args=(0, controls[0])),
               threading.Thread(target=worker, args=(1, controls[1], "a dog", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, a) for r, a in zip(results, alone))

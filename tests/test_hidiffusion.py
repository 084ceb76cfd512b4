"""HiDiffusion (RAU-Net + MSW-MSA): patch/unpatch, schedules, sizes, composition, bad input.

Numerical parity with the official package is in test_hidiffusion_parity.py.
"""

import pytest
import torch
import torch.nn.functional as F

import anysize
from anysize.errors import AnysizeError, InvalidArgumentError, UnknownChoiceError
from anysize.models import adapt
from anysize.patches.hidiffusion import raunet_phase
from anysize.patches.msw_msa import feature_hw, shift_index, window_merge, window_partition
from anysize.sampling import sample

UNET_FAMILIES = ["sd1", "sd2", "sdxl"]


def gen(adapter, method="direct", size=(256, 256), steps=4, seed=0, scheduler=None, **options):
    h, w = size
    return anysize.generate(adapter, "a red square", height=h, width=w, steps=steps, seed=seed, method=method,
                            scheduler=scheduler, method_options=options or None, output_type="latent",
                            progress=False).latents


def stock(pipe, size=(256, 256), steps=4, seed=0, **kw):
    h, w = size
    return pipe("a red square", height=h, width=w, num_inference_steps=steps, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(seed), output_type="latent", **kw).images


def unet_fingerprint(unet):
    """Everything the patch may touch: processors, instance forwards, hooks, num_upsamplers."""
    return (
        unet.num_upsamplers,
        {k: id(v) for k, v in unet.attn_processors.items()},
        sorted(name for name, m in unet.named_modules() if "forward" in m.__dict__),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()),
        "_anysize_patch" in unet.__dict__,
    )


# ------------------------------------------------------------------------------ patch / unpatch


@pytest.mark.parametrize("family", UNET_FAMILIES)
def test_patch_changes_output_and_leaving_restores_it_exactly(tiny, family):
    pipe = tiny(family)
    before_state = unet_fingerprint(pipe.unet)
    before = stock(pipe)
    with anysize.patch(pipe, "hidiffusion") as p:
        inside = stock(pipe)
        assert unet_fingerprint(pipe.unet) != before_state
    after = stock(pipe)
    assert torch.equal(before, after)
    assert unet_fingerprint(pipe.unet) == before_state
    assert (inside - before).abs().max() > 1e-2
    assert any(entry[2] or entry[3] for entry in p.log)  # RAU-Net ran on some calls


def test_patch_is_restored_after_an_exception_and_refuses_nesting(tiny):
    pipe = tiny("sd1")
    state = unet_fingerprint(pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with anysize.patch(pipe, "hidiffusion"):
            raise RuntimeError("boom")
    assert unet_fingerprint(pipe.unet) == state
    with anysize.patch(pipe, "hidiffusion"):
        with pytest.raises(InvalidArgumentError, match="already patched"):
            with anysize.patch(pipe, "msw_msa"):
                pass
    assert unet_fingerprint(pipe.unet) == state


def test_adapter_patch_restores_the_adapter(tiny):
    adapter = adapt(tiny("sd1"))
    before = gen(adapter)
    attributes = dict(adapter.__dict__)
    with anysize.patch(adapter, "hidiffusion"):
        assert adapter.__dict__.keys() == attributes.keys()  # told the step by the loop: the adapter is not wrapped
        inside = gen(adapter)
    assert adapter.__dict__.keys() == attributes.keys()
    assert torch.equal(gen(adapter), before)
    assert not torch.equal(inside, before)


# ------------------------------------------------------------------------------ reduction


@pytest.mark.parametrize("family", UNET_FAMILIES)
def test_reduces_to_plain_generation_at_and_below_native_size(tiny, family):
    adapter = adapt(tiny(family))
    for size in [(128, 128), (96, 128), (64, 64)]:
        assert torch.equal(gen(adapter, "hidiffusion", size), gen(adapter, "direct", size))
    # the official package's behaviour at native size is still available, and differs
    assert not torch.equal(gen(adapter, "hidiffusion", (128, 128), apply_at_native=True), gen(adapter, "direct", (128, 128)))


def test_both_halves_off_is_plain_generation(tiny):
    adapter = adapt(tiny("sdxl"))
    assert torch.equal(gen(adapter, "hidiffusion", raunet=False, msw_msa=False), gen(adapter, "direct"))


# ------------------------------------------------------------------------------ schedules


def _input_sizes(module, fn):
    """Input (h, w) of ``module`` per call while ``fn`` runs."""
    sizes = []
    def hook(m, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_tensor"))
        sizes.append(tuple(x.shape[-2:]))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return sizes


def test_raunet_phase_thresholds_follow_the_official_integer_arithmetic():
    # SD: RAD for int(0.4 N) steps; SDXL aggressive: RAD for int(0.16 N), then pool until int(0.4 N)
    assert [raunet_phase("rad", k, 5, 0.4, 0.0, False, 0.16) for k in range(3)] == [(True, False)] * 2 + [(False, False)]
    sdxl = [raunet_phase("pool", k, 50, 0.4, 0.0, True, 8 / 50) for k in range(50)]
    assert sdxl[:8] == [(True, False)] * 8 and sdxl[8:20] == [(False, True)] * 12 and sdxl[20:] == [(False, False)] * 30
    sd_extreme = [raunet_phase("rad", k, 50, 0.7, 0.3, False, 0.16) for k in range(50)]
    assert sd_extreme.count((True, True)) == 15 and sd_extreme.count((True, False)) == 20


def test_sd_schedule_at_2x_and_4x_native(tiny):
    adapter = adapt(tiny("sd1"))  # native latent 16; DDIM: one U-Net call per step (PNDM makes n + 1)
    # 2x (latent 32): RAD on down_blocks.0 for int(0.4*10)=4 steps -> down_blocks.1 sees 8 instead of 16
    down = adapter.network.down_blocks
    sizes = _input_sizes(down[1], lambda: gen(adapter, "hidiffusion", (256, 256), steps=10, scheduler="ddim"))
    assert sizes == [(8, 8)] * 4 + [(16, 16)] * 6
    # 4x (latent 64): the extreme profile, RAD for 7 steps, pool in down_blocks.1 for 3 -> down_blocks.2 input
    sizes = _input_sizes(down[2], lambda: gen(adapter, "hidiffusion", (512, 512), steps=10, scheduler="ddim"))
    assert sizes == [(4, 4)] * 3 + [(8, 8)] * 4 + [(16, 16)] * 3
    # explicit t1 overrides the family default
    sizes = _input_sizes(down[1], lambda: gen(adapter, "hidiffusion", (256, 256), steps=10, scheduler="ddim", t1=0.2))
    assert sizes == [(8, 8)] * 2 + [(16, 16)] * 8


def test_sdxl_aggressive_schedule(tiny):
    adapter = adapt(tiny("sdxl"))
    down1 = adapter.network.down_blocks[1]
    # 10 steps at 2x (latent 32, down_blocks.1 at 16): RAD on its down-sampler for int(1.6)=1 step,
    # pool after its first layer for steps 1..3, vanilla after; down_blocks.2 sees 4 instead of 8
    for aggressive, pooled in [(None, [16, 8, 8, 8]), (False, [8, 8, 8, 8])]:
        with_pool, deep = [], []
        run = lambda: gen(adapter, "hidiffusion", (256, 256), steps=10, aggressive=aggressive)  # noqa: E731
        deep = _input_sizes(adapter.network.down_blocks[2], lambda: with_pool.extend(_input_sizes(down1.resnets[1], run)))
        assert with_pool == [(s, s) for s in pooled] + [(16, 16)] * 6
        assert deep == [(4, 4)] * 4 + [(8, 8)] * 6


def test_partial_schedule_counts_from_the_first_executed_step(tiny):
    """img2img / upscaling: the RAU-Net phase is a fraction of the executed steps, as in the
    official package (its N is the pipeline's executed step count)."""
    from diffusers import DDIMScheduler

    adapter = adapt(tiny("sd1"))
    scheduler = DDIMScheduler.from_config(adapter.scheduler.config)
    cond = adapter.encode_prompt(["a cat"], None, guidance_scale=7.5)
    direct = anysize.methods.create("direct")
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    def run():
        timesteps = adapter.set_timesteps(scheduler, 10, (32, 32))
        sample(direct, adapter, x, cond, scheduler, timesteps[4:], progress=False)

    with anysize.patch(adapter, "hidiffusion") as p:  # around any method: follows anysize's loop
        sizes = _input_sizes(adapter.network.down_blocks[1], run)
    assert sizes == [(8, 8)] * 2 + [(16, 16)] * 4  # int(0.4 * 6) = 2 of the 6 executed steps
    assert [e[:2] for e in p.log] == [(i, 6) for i in range(6)]

    # the hidiffusion method driven by someone else's loop (an upscaling stage) on the same schedule
    from anysize.request import Request
    from anysize.sampling import make_generators

    method = anysize.methods.create("hidiffusion")
    request = Request(adapter, ["a cat"], None, 256, 256, 10, 7.5, [0], None, cond, make_generators(0, 1), progress=False)
    timesteps = adapter.set_timesteps(scheduler, 10, (32, 32))
    with method.session(request) as q:
        driven = sample(method, adapter, x, cond, scheduler, timesteps[4:], progress=False)
    assert [e[:2] for e in q.log] == [(i, 6) for i in range(6)]
    with anysize.patch(adapter, "hidiffusion", seed=0):
        timesteps = adapter.set_timesteps(scheduler, 10, (32, 32))
        found = sample(direct, adapter, x, cond, scheduler, timesteps[4:], progress=False)
    assert torch.equal(driven, found)
    with pytest.raises(InvalidArgumentError, match="session"):
        sample(method, adapter, x, cond, scheduler, timesteps[4:], progress=False)


def test_pipeline_counter_restarts_after_an_interrupted_run(tiny):
    pipe = tiny("sd1")

    def stop(pipe_, i, t, kw):
        if i == 1:
            raise KeyboardInterrupt
        return kw

    with anysize.patch(pipe, "hidiffusion", shift_source="none"):
        fresh = stock(pipe, steps=5)
        with pytest.raises(KeyboardInterrupt):
            stock(pipe, steps=5, callback_on_step_end=stop)
        again = stock(pipe, steps=5)
    assert torch.equal(fresh, again)


def test_the_step_position_of_a_stock_pipeline_reads_no_tensor(tiny):
    """On a GPU the U-Net's timestep lives on the device; reading it would make the host wait at
    every call. Neither the pipeline's step tracker nor the patch looks at it: both U-Net hooks run
    here with a timestep that explodes when touched, and still give every call its position."""
    pipe = tiny("sd1")

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the timestep was read ({name})")

        def __bool__(self):
            raise AssertionError("the timestep was read (bool)")

    with anysize.patch(pipe, "hidiffusion", shift_source="none") as p:
        hooks = list(pipe.unet._forward_pre_hooks.items())
        assert len(hooks) == 2  # the tracker's, then the patch's
        sample = torch.zeros(1, 4, 32, 32)
        pipe._num_timesteps = 3
        pipe.progress_bar(total=3).close()  # a pipeline opens its loop's progress bar
        for _ in range(3):
            for key, hook in hooks:
                if key in pipe.unet._forward_pre_hooks_with_kwargs:
                    hook(pipe.unet, (sample, Untouchable()), {})
                else:
                    hook(pipe.unet, (sample, Untouchable()))
        assert [e[:2] for e in p.log] == [(0, 3), (1, 3), (2, 3)]


def _attention(x):
    """Plain single-head self-attention over the token axis."""
    return torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1) @ x


def test_window_attention_equals_attention_on_each_rolled_quadrant():
    torch.manual_seed(0)
    b, h, w, c = 2, 8, 12, 5
    x = torch.randn(b, h * w, c)
    for shift in [(0, 0), (2, 3), (6, 9)]:
        windows, undo = window_partition(x, (h, w), 2, shift)
        assert windows.shape == (4 * b, 4 * 6, c)
        got = window_merge(_attention(windows), undo)
        rolled = torch.roll(x.view(b, h, w, c), (-shift[0], -shift[1]), (1, 2))
        out = torch.empty_like(rolled)
        for i in range(2):
            for j in range(2):
                q = rolled[:, i * 4:(i + 1) * 4, j * 6:(j + 1) * 6].reshape(b, 24, c)
                out[:, i * 4:(i + 1) * 4, j * 6:(j + 1) * 6] = _attention(q).view(b, 4, 6, c)
        want = torch.roll(out, shift, (1, 2)).reshape(b, h * w, c)
        assert torch.allclose(got, want, atol=1e-6)


def test_odd_maps_go_through_a_bicubic_resize_to_whole_windows():
    torch.manual_seed(0)
    x = torch.randn(1, 7 * 5, 3)
    windows, undo = window_partition(x, (7, 5), 2, (0, 0))
    assert windows.shape == (4, 4 * 3, 3)
    back = window_merge(windows, undo)  # identity attention: the resize round trip
    grid = F.interpolate(x.view(1, 7, 5, 3).permute(0, 3, 1, 2), size=(8, 6), mode="bicubic")
    want = F.interpolate(grid, size=(7, 5), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 35, 3)
    assert torch.allclose(back, want, atol=1e-6)


def test_feature_size_and_shift_index():
    assert feature_hw(32 * 24, (64, 48)) == (32, 24)
    assert feature_hw(17 * 13, (33, 25)) == (17, 13)  # ceil at odd sizes
    assert feature_hw(7, (64, 48)) is None
    assert [shift_index(u, 4) for u in (0.0, 0.25, 0.2500001, 0.5, 0.75, 0.76, 0.999)] == [0, 0, 1, 1, 2, 3, 3]


def test_scripted_shifts_drive_every_windowed_block_call(tiny):
    pipe = tiny("sd1")
    seen = []

    def script(i):
        seen.append(i)
        return i % 4

    with anysize.patch(pipe, "msw_msa", shift_source=script) as p:
        stock(pipe, steps=2)
    assert len(p.log) >= 2
    assert seen == list(range(5 * len(p.log)))  # 5 windowed blocks (SD 1.5 layout) per U-Net call


def test_same_seed_same_image_and_global_rng_untouched(tiny):
    adapter = adapt(tiny("sd1"))
    state = torch.get_rng_state()
    a = gen(adapter, "hidiffusion", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, gen(adapter, "hidiffusion", seed=3))
    # the shifts matter: a fixed zero shift gives another image
    assert not torch.equal(a, gen(adapter, "hidiffusion", seed=3, shift_source="none"))


# ------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("family", UNET_FAMILIES)
@pytest.mark.parametrize("size", [(136, 392), (392, 136), (200, 264), (128, 384)])
def test_odd_sizes_and_1_to_3_ratios_run(tiny, family, size):
    adapter = adapt(tiny(family))
    out = gen(adapter, "hidiffusion", size, steps=3)
    assert out.shape[-2:] == (size[0] // 8, size[1] // 8)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------ composition


def test_patch_around_direct_equals_the_hidiffusion_method(tiny):
    """The patch composes with any method's run: around `direct` it finds the steps itself and
    gives exactly what the hidiffusion method (which drives the clock) gives."""
    adapter = adapt(tiny("sdxl"))
    with anysize.patch(adapter, "hidiffusion", seed=5):
        patched = gen(adapter, "direct", steps=6, seed=5)
    method = gen(adapter, "hidiffusion", steps=6, seed=5)
    assert torch.equal(patched, method)
    assert not torch.equal(method, gen(adapter, "direct", steps=6, seed=5))


def test_method_metadata_and_registry(tiny):
    adapter = adapt(tiny("sd1"))
    result = anysize.generate(adapter, "a cat", height=256, width=256, steps=2, method="hidiffusion",
                              method_options={"t1": 0.5}, output_type="latent", progress=False)
    assert result.config["method"] == "hidiffusion"
    assert result.config["method_options"]["t1"] == 0.5
    assert result.config["method_options"]["inner"] == "direct"
    assert "hidiffusion" in anysize.METHODS


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_transformer_families_are_refused(tiny, family):
    pipe = tiny(family)
    with pytest.raises(InvalidArgumentError, match="hidiffusion"):
        anysize.generate(adapt(pipe), "a cat", method="hidiffusion", steps=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="U-Net"):
        anysize.patch(pipe, "hidiffusion")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"t1": 1.5}, "t1 .* in \\[0, 1\\]"),
        ({"t2": -0.1}, "t2 .* in \\[0, 1\\]"),
        ({"t1": "half"}, "t1"),
        ({"windows": 0}, "windows"),
        ({"shift_choices": 2.5}, "shift_choices"),
        ({"shift_source": "dice"}, "shift_source .* random, global, none"),
        ({"raunet": "yes"}, "raunet"),
        ({"extreme_scale": 1}, "extreme_scale"),
        ({"rad_block": -1}, "rad_block"),
        ({"inner": "hidiffusion"}, "inner"),
        ({"inner": "nope"}, "inner .*direct"),
        ({"t3": 0.1}, "no option t3"),
    ],
)
def test_bad_options_are_clear_errors(tiny, options, message):
    adapter = adapt(tiny("sd1"))
    with pytest.raises(InvalidArgumentError, match=message):
        anysize.generate(adapter, "a cat", method="hidiffusion", method_options=options, steps=1, progress=False)
    patch_options = {k: v for k, v in options.items() if k != "inner"}
    if patch_options:
        with pytest.raises(InvalidArgumentError):
            anysize.patch(adapter, "hidiffusion", **patch_options)


def test_a_unet_without_the_patched_layers_is_refused_before_any_work():
    # e.g. a 1-layer-per-block U-Net (anysize bench's reduced depth): no pair of attention layers to pool between
    from anysize.builders import tiny_pipeline
    from anysize.methods import create

    pipe = tiny_pipeline("sd1")
    pipe.unet.down_blocks[1].attentions = torch.nn.ModuleList(pipe.unet.down_blocks[1].attentions[:1])
    adapter = adapt(pipe)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    message = "down_blocks.1 has fewer than 2 attention layers for the pool"
    with pytest.raises(InvalidArgumentError, match=message):
        create("hidiffusion").check(adapter, 256, 256, 4)  # what bench, eval and the front ends ask first
    with pytest.raises(InvalidArgumentError, match=message):
        anysize.generate(adapter, "a cat", width=256, height=256, method="hidiffusion", steps=2, progress=False)
    assert calls == []
    create("hidiffusion", raunet=False).check(adapter, 256, 256, 4)  # windowed attention alone needs no pool


def test_bad_patch_targets_and_names(tiny):
    with pytest.raises(UnknownChoiceError, match="hidiffusion"):
        anysize.patch(tiny("sd1"), "deepshrink")
    with pytest.raises(InvalidArgumentError, match="pipeline or an anysize model adapter"):
        anysize.patch(torch.nn.Linear(2, 2), "hidiffusion")
    with pytest.raises(InvalidArgumentError, match="block"):
        anysize.patch(tiny("sd1"), "hidiffusion", rad_block=3)  # the last level has no down-sampler
    assert issubclass(InvalidArgumentError, AnysizeError)

"""A run the device's memory cannot hold: one line that says what was asked and the ways out, in every
front end, with the failed run's memory given back (never a traceback, never a half-written file)."""

from __future__ import annotations

import json
import weakref

import pytest
import torch

from anysize import api, cli
from anysize.errors import AnysizeError, OutOfMemoryError
from anysize.methods.direct import Direct
from anysize.methods.registry import METHODS

TENSORS: list[weakref.ref] = []  # the failing runs' big tensors, to see them freed

ALLOCATOR_MESSAGE = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of "
                     "which 3.12 GiB is free. Including non-PyTorch memory, this process has 20.41 GiB memory in use. "
                     "Of the allocated memory 19.1 GiB is allocated by PyTorch, and 0.9 GiB is reserved by PyTorch "
                     "but unallocated. If reserved but unallocated memory is large try setting "
                     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


class _OutOfMemory(Direct):
    """Direct until its third network call, which the allocator refuses (as a GPU would at a size too big)."""

    name = "test-oom"
    summary = "direct, out of memory on the third call (test only)"
    error = torch.OutOfMemoryError

    def predict(self, ctx, x_in):
        canvas = torch.zeros(4, 64, 64)  # held by this frame when the error is raised
        TENSORS.append(weakref.ref(canvas))
        if ctx.index == 2:
            raise self.error(ALLOCATOR_MESSAGE)
        return super().predict(ctx, x_in)


class _CpuOutOfMemory(_OutOfMemory):
    name = "test-oom-cpu"
    error = RuntimeError  # the CPU allocator's error is a plain RuntimeError

    def predict(self, ctx, x_in):
        if ctx.index == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 68719476736 bytes.")
        return super().predict(ctx, x_in)


class _Broken(Direct):
    name = "test-broken"
    summary = "a bug that is not about memory (test only)"

    def predict(self, ctx, x_in):
        raise RuntimeError("shape mismatch in the test method")


@pytest.fixture
def registered(monkeypatch):
    for m in (_OutOfMemory, _CpuOutOfMemory, _Broken):
        monkeypatch.setitem(METHODS, m.name, m)
    TENSORS.clear()


def test_generate_out_of_memory_is_one_line_with_the_request_and_the_ways_out(tiny, registered):
    pipe = tiny("sd1")
    with pytest.raises(OutOfMemoryError) as info:
        api.generate(pipe, ["a cat", "a dog"], width=128, height=96, method="test-oom", steps=3, progress=False)
    e = info.value
    text = str(e)
    assert isinstance(e, AnysizeError) and "\n" not in text
    # the allocator's first three sentences: what it tried to allocate, and what was free
    assert text.startswith("out of memory on cpu generating 2 128x96 images with test-oom (CUDA out of memory. Tried "
                           "to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 3.12 GiB is free); ")
    assert "Including" not in text
    # the ways out this run has not taken, in the Python spelling; the command line's in for_cli
    assert "try fewer prompts per call, tiled_vae='fast', method='fstd'" in text and text.endswith("a smaller size")
    assert "dtype=" not in text  # half precision is a GPU remedy
    cli_text = e.for_cli()
    assert "try --batch 1, --tiled-vae fast, --method fstd" in cli_text and cli_text.endswith("a smaller --size")
    assert "try fewer images at once, tiled VAE: fast, method: fstd (its memory" in e.for_app()
    # no chained traceback keeps the failed run's frames: its tensors are gone once the error is raised
    assert e.__context__ is None and e.__cause__ is None
    assert TENSORS and all(ref() is None for ref in TENSORS)


def test_the_tips_leave_out_what_the_run_already_does(tiny, registered):
    pipe = tiny("sd1")
    with pytest.raises(OutOfMemoryError) as info:
        api.generate(pipe, "a cat", width=128, height=128, method="test-oom-cpu", steps=3, tiled_vae="fast",
                     progress=False)
    text = str(info.value)
    assert "with test-oom-cpu (" in text and "can't allocate memory" in text
    assert "fewer prompts" not in text and "tiled_vae" not in text
    assert "try method='fstd'" in text


def test_a_window_method_is_told_to_batch_fewer_windows(tiny, registered, monkeypatch):
    from anysize.methods.multidiffusion import MultiDiffusion

    def refused(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(MultiDiffusion, "predict", refused)
    with pytest.raises(OutOfMemoryError) as info:
        api.generate(tiny("sd1"), "a cat", width=256, height=128, method="multidiffusion", steps=2, progress=False)
    e = info.value
    assert "try method_options={'view_batch_size': 1}, tiled_vae='fast', a smaller size" in str(e)
    assert "try --set view_batch_size=1, --tiled-vae fast, a smaller --size" in e.for_cli()
    assert "try multidiffusion option view_batch_size: 1, tiled VAE: fast" in e.for_app()
    with pytest.raises(OutOfMemoryError) as info:  # already one window a call: not suggested again
        api.generate(tiny("sd1"), "a cat", width=256, height=128, method="multidiffusion", steps=2, progress=False,
                     method_options={"view_batch_size": 1})
    assert "view_batch_size" not in str(info.value)


def test_a_bug_that_is_not_about_memory_keeps_its_own_error(tiny, registered):
    with pytest.raises(RuntimeError, match="shape mismatch in the test method") as info:
        api.generate(tiny("sd1"), "a cat", method="test-broken", steps=2, progress=False)
    assert not isinstance(info.value, AnysizeError)


def test_upscale_out_of_memory_names_the_target_size(tiny, registered):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(OutOfMemoryError, match=r"^out of memory on cpu upscaling to 128x128 with test-oom \(CUDA out"):
        api.upscale(tiny("sd1"), image, scale=2, method="test-oom", steps=4, strength=1.0, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anysize.builders import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("model") / "m")


def test_the_command_line_says_it_in_one_line_with_exit_code_1(capsys, model_dir, registered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["generate", "a cat", "--model", str(model_dir), "--method", "test-oom", "--steps", "3",
                   "--size", "128x128", "--out", "cat.png", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("anysize: error: out of memory on cpu generating 1 128x128 image "
                                                   "with test-oom (CUDA out of memory.")
    assert "try --tiled-vae fast, --method fstd (its memory is one window batch at any size), a smaller --size" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_batch_records_the_chunk_as_failed_and_runs_the_others(capsys, model_dir, registered, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(j) + "\n" for j in [
        {"id": "big", "prompt": "a cat", "method": "test-oom", "width": 128, "height": 128, "steps": 3},
        {"id": "ok", "prompt": "a dog", "width": 128, "height": 128, "steps": 2},
    ]))
    rc = cli.main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model_dir), "--quiet"])
    capsys.readouterr()
    assert rc == 1
    assert (tmp_path / "out" / "ok.png").exists() and not (tmp_path / "out" / "big.png").exists()
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "summary.jsonl").read_text().splitlines())}
    assert records["ok"]["status"] == "done"
    assert records["big"]["status"] == "failed"
    assert records["big"]["error"].startswith("OutOfMemoryError: out of memory on cpu generating 1 128x128 image")


def test_a_guided_call_too_big_for_the_device_runs_its_halves_one_after_the_other(tiny, monkeypatch):
    from anysize.models import adapt

    adapter = adapt(tiny("sd1"))
    real = adapter._forward
    batches = []

    def limited(x, t, embeds, window):  # this "device" holds one 256² sample at a time, two 128² ones
        batches.append((x.shape[0], x.shape[-1]))
        if x.shape[0] * x.shape[-1] * x.shape[-2] > 32 * 32:
            canvas = torch.zeros(1 << 20)  # the failed call's activations, to see them freed
            TENSORS.append(weakref.ref(canvas))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return real(x, t, embeds, window)

    expected = api.generate(adapter, "a cat", width=256, height=256, steps=2, progress=False, output_type="latent")
    assert batches == [] and adapter._split_guidance == set()
    TENSORS.clear()
    monkeypatch.setattr(adapter, "_forward", limited)
    got = api.generate(adapter, "a cat", width=256, height=256, steps=2, progress=False, output_type="latent")
    # the first step's batched call fails once; from then on the halves run one after the other
    assert batches == [(2, 32), (1, 32), (1, 32)] + [(1, 32)] * 4
    assert torch.allclose(got.images, expected.images, atol=1e-4, rtol=0)  # float rounding of batch 1 vs 2 (1.3e-5 here)
    assert got.network_calls == expected.network_calls  # the failed call evaluated nothing
    assert all(ref() is None for ref in TENSORS)
    assert adapter._split_guidance == {((1, 4, 32, 32), torch.float32)}
    # known for this shape now: no failed attempt in the next run; a smaller canvas is still batched
    batches.clear()
    api.generate(adapter, "a cat", width=256, height=256, steps=2, progress=False, output_type="latent")
    assert batches == [(1, 32)] * 6
    batches.clear()
    api.generate(adapter, "a cat", width=128, height=128, steps=2, progress=False, output_type="latent")
    assert batches == [(2, 16)] * 3
    # a canvas whose halves do not fit either is the one-line error
    with pytest.raises(OutOfMemoryError, match=r"^out of memory on cpu generating 1 512x256 image with direct"):
        api.generate(adapter, "a cat", width=512, height=256, steps=2, progress=False)

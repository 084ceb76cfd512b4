"""One progress bar per user-level job (:mod:`anysize.progress`): a generate call's sampling loops
and tiled VAE passes count in one bar named by the chosen method; outside a job a loop keeps its own."""

import threading

import pytest
import torch
from _progress_helpers import bar_lines, opened

import anysize
from anysize.methods.direct import Direct
from anysize.models import adapt
from anysize.sampling import sample


def _steps_and_bars(capsys, adapter, **kw):
    """Run a generate call; (the steps its callback saw, the bar refreshes on stderr)."""
    seen = []
    capsys.readouterr()
    anysize.generate(adapter, "a cat", steps=2, seed=1, output_type="latent", callback=seen.append, **kw)
    return seen, bar_lines(capsys.readouterr().err)


@pytest.mark.parametrize("method, size, stage", [
    ("demofusion", (256, 128), "demofusion · phase 2/2"),
    ("asd", (192, 128), "asd · stage II (fstd)"),
    ("hidiffusion", (128, 128), None),  # runs its steps through a direct instance: still named hidiffusion
])
def test_a_multi_stage_method_shows_one_bar_named_by_it(capsys, tiny, method, size, stage):
    seen, lines = _steps_and_bars(capsys, adapt(tiny("sd1")), method=method, width=size[0], height=size[1])
    assert lines and opened(lines) == 1, lines
    assert {ln["desc"].split(" · ")[0] for ln in lines} == {method}
    if stage is not None:
        assert len({info.stage for info in seen}) == 2  # really two loops
        assert stage in {ln["desc"] for ln in lines}
    assert lines[-1]["total"] == len(seen)  # the total grew loop by loop to every step


def test_the_tiled_decode_counts_in_the_runs_bar(capsys, tiny):
    adapter = adapt(tiny("sd1"))
    capsys.readouterr()
    # 768 px wide: two tiles of the decoder (96 latent pixels at 64 a tile)
    anysize.generate(adapter, "a cat", width=768, height=128, steps=1, seed=1, tiled_vae=True, output_type="np")
    lines = bar_lines(capsys.readouterr().err)
    assert opened(lines) == 1, lines
    assert "direct · tiled VAE decode (exact)" in {ln["desc"] for ln in lines}
    assert {ln["desc"].split(" · ")[0] for ln in lines} == {"direct"}


def test_progress_false_shows_nothing(capsys, tiny):
    capsys.readouterr()
    anysize.generate(adapt(tiny("sd1")), "a cat", method="demofusion", width=256, height=128, steps=1,
                     tiled_vae=True, progress=False, output_type="np")
    assert capsys.readouterr().err == ""


def test_runs_in_two_threads_keep_their_own_bars(capsys, tiny):
    adapter = adapt(tiny("sd1"))
    both_running = threading.Barrier(2, timeout=60)
    steps, errors = {}, []

    def job(method, n):
        seen = []

        def callback(info):
            seen.append(info)
            if len(seen) == 1:
                both_running.wait()  # each thread is inside its run while the other's has begun

        try:
            anysize.generate(adapter, "a cat", method=method, steps=n, seed=1, scheduler="ddim", output_type="latent",
                             callback=callback)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        steps[method] = len(seen)

    capsys.readouterr()
    threads = [threading.Thread(target=job, args=a) for a in (("direct", 2), ("multidiffusion", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    lines = bar_lines(capsys.readouterr().err)
    for method in ("direct", "multidiffusion"):
        own = [ln for ln in lines if ln["desc"] == method]
        assert own and {ln["total"] for ln in own} == {steps[method]}, lines
    assert {ln["desc"] for ln in lines} == {"direct", "multidiffusion"}


def _loop(tiny, **kw):
    adapter = adapt(tiny("sd1"))
    scheduler = anysize.schedulers.make_scheduler(adapter, "ddim")
    timesteps = adapter.set_timesteps(scheduler, 3, (16, 16))
    cond = adapter.encode_prompt(["a cat"], None, guidance_scale=1.0)
    latents = torch.randn(1, adapter.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    return sample(Direct(), adapter, latents, cond, scheduler, timesteps, **kw)


def test_sample_outside_a_run_keeps_its_own_bar(capsys, tiny):
    capsys.readouterr()
    _loop(tiny, stage="refine")
    lines = bar_lines(capsys.readouterr().err)
    assert lines and {(ln["desc"], ln["total"]) for ln in lines} == {("direct · refine", 3)}
    _loop(tiny, progress=False)
    assert capsys.readouterr().err == ""


def test_sample_inside_a_run_counts_in_its_bar(capsys, tiny):
    from anysize.progress import current_run, run_progress

    capsys.readouterr()
    with run_progress("my job") as run:
        _loop(tiny, stage="one")
        _loop(tiny)
        assert current_run() is run
    assert current_run() is None
    lines = bar_lines(capsys.readouterr().err)
    assert opened(lines) == 1, lines
    assert {ln["desc"] for ln in lines} == {"my job · one", "my job"} and lines[-1]["total"] == 6
    with run_progress("quiet job", False):
        _loop(tiny)  # a silent job: its loops show nothing either
    assert capsys.readouterr().err == ""

"""The contract every registered method keeps, checked for each family it supports.

A new method gets all of it by registering: at the native size it is plain generation (``direct``);
image i of a batch is image i generated alone (explicit, non-consecutive seeds); the global RNGs
are untouched; the same seed gives the same bytes; no step makes the host wait for the device; its
options round-trip through the image metadata; and one method object serves two runs on two
threads at once, each getting the image it gets alone.
"""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
import torch

import anysize
from anysize import methods
from anysize.models import FAMILIES, adapt
from anysize.builders import tiny_pipeline
from anysize.testing.syncs import audit_sampling

#: a canvas above the native 128x128 px of every case, wide and not a power of two (16-px multiple)
SIZE = (128, 320)
STEPS = 3


def _cases():
    out = []
    for name in methods.names():
        families = methods.get(name).families or FAMILIES
        out += [(name, f) for f in FAMILIES if f in families and f != "sd-x4-upscaler"]
    return out


CASES = _cases()
IDS = [f"{m}-{f}" for m, f in CASES]


def _family(name):
    """The family the single-family checks run a method on: sd1, or its first where it has no sd1 (imax: flux)."""
    return "sd1" if (name, "sd1") in CASES else next(f for m, f in CASES if m == name)


@pytest.fixture(scope="module")
def adapters(tiny):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = adapt(tiny(family), native_size=16)
        return cache[family]

    return get


def _gen(adapter, method, *, size=SIZE, prompt="a red circle", seed=5, steps=STEPS, options=None, **kw):
    h, w = size
    return anysize.generate(adapter, prompt, height=h, width=w, method=method, steps=steps, seed=seed,
                            method_options=options, output_type="latent", progress=False, **kw)


def _at_once(calls):
    """Every call on a thread of its own, all started together; their results in order (the first
    error raised)."""
    results, errors = [None] * len(calls), []
    start = threading.Barrier(len(calls))

    def run(i):
        try:
            start.wait()
            results[i] = calls[i]()
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_the_cases_cover_every_registered_method():
    assert sorted({m for m, _ in CASES}) == methods.names()
    assert all(any(c[0] == m for c in CASES) for m in methods.names())
    assert all((m, "sd1") in CASES for m in methods.names() if "sd1" in (methods.get(m).families or FAMILIES))


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_native_size_is_plain_generation(adapters, name, family):
    adapter = adapters(family)
    native = adapter.native_size
    options = methods.get(name).native_options
    plain = _gen(adapter, "direct", size=native)
    ours = _gen(adapter, name, size=native, options=options)
    assert torch.allclose(ours.latents, plain.latents, atol=1e-5), (ours.latents - plain.latents).abs().max()
    assert ours.network_calls == plain.network_calls


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_an_image_of_a_batch_is_that_image_alone_and_runs_are_repeatable(adapters, name, family):
    adapter = adapters(family)
    quick = methods.get(name).demo_options(adapter) or None  # the invariants hold for any options: the quick ones
    rng = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    batch = _gen(adapter, name, prompt=["a red circle", "a blue square"], seed=[5, 9], options=quick)
    again = _gen(adapter, name, prompt=["a red circle", "a blue square"], seed=[5, 9], options=quick)
    assert torch.equal(batch.latents, again.latents)  # same seeds, same bytes
    other = _gen(adapter, name, prompt=["a red circle", "a blue square"], seed=[6, 9], options=quick)
    assert (other.latents[0] - batch.latents[0]).abs().max() > 1e-3 and torch.allclose(other.latents[1], batch.latents[1], atol=1e-3)
    after = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1]
    assert torch.equal(rng[0], after[0]) and rng[1] == after[1] and np.array_equal(rng[2], after[2])
    for i, (prompt, seed) in enumerate((("a red circle", 5), ("a blue square", 9))):
        alone = _gen(adapter, name, prompt=prompt, seed=seed, options=quick).latents[0]
        # float rounding only (prompts encoded together round differently on some CPUs); a wrong
        # seed or random stream differs by whole units
        assert (batch.latents[i] - alone).abs().max() <= 1e-3, (i, (batch.latents[i] - alone).abs().max())


@pytest.mark.parametrize("name", [m for m in methods.names() if (m, "sd1") in CASES])
@pytest.mark.parametrize("scheduler", ["euler_a", "ddpm"])
def test_with_a_stochastic_scheduler_an_image_of_a_batch_is_still_that_image_alone(adapters, name, scheduler):
    # the step noise of image i comes from image i's generator, as diffusers draws it from a list of them
    adapter = adapters("sd1")
    quick = methods.get(name).demo_options(adapter) or None
    batch = _gen(adapter, name, prompt=["a red circle", "a blue square"], seed=[5, 9], options=quick, scheduler=scheduler)
    for i, (prompt, seed) in enumerate((("a red circle", 5), ("a blue square", 9))):
        alone = _gen(adapter, name, prompt=prompt, seed=seed, options=quick, scheduler=scheduler).latents[0]
        assert (batch.latents[i] - alone).abs().max() <= 1e-3, (i, (batch.latents[i] - alone).abs().max())


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_no_step_waits_for_the_device(adapters, name, family):
    """On a CPU, :class:`~anysize.testing.syncs.HostSyncAudit` follows the tensors that would live on
    the device and records every host read of one and every blocking upload: their number must not
    grow with the steps (one-time work, e.g. a host copy of the schedule, is fine), and the
    accelerator code paths the audit switches on must compute the same image. One unaudited run
    first: work done once per process and kept (e.g. imax's reading of a position-ids tensor, made
    once per window and size) would otherwise fall in the first audited run only."""
    adapter = adapters(family)
    _gen(adapter, name, steps=3)
    counts, reports = {}, []
    for steps in (3, 6):
        with audit_sampling() as audits:
            out = _gen(adapter, name, steps=steps).latents
        counts[steps] = sum(len(a.events) for a in audits)
        reports += [a.report() for a in audits]
    assert torch.equal(out, _gen(adapter, name, steps=6).latents)
    report = "\n".join(reports)
    assert counts[6] == counts[3], f"{name} waits for the device at every step:\n{report}"
    assert counts[6] <= 4, report


@pytest.mark.parametrize("name", methods.names())
def test_options_round_trip_through_the_image_metadata(adapters, name):
    result = _gen(adapters(_family(name)), name)
    stored = json.loads(json.dumps(result.config["method_options"]))
    assert methods.create(name, **stored).describe() == result.config["method_options"]


@pytest.mark.parametrize("name", methods.names())
def test_one_method_object_serves_two_threads_at_once(name):
    # two pipelines with the same weights: a network patch belongs to one network at a time
    a, b = (adapt(tiny_pipeline(_family(name)), native_size=16) for _ in range(2))
    method = methods.create(name, **methods.get(name).demo_options(a))
    alone = [_gen(a, method, seed=5).latents, _gen(b, method, prompt="a blue square", seed=9).latents]
    results = _at_once([lambda: _gen(a, method, prompt="a red circle", seed=5).latents,
                        lambda: _gen(b, method, prompt="a blue square", seed=9).latents])
    assert torch.equal(results[0], alone[0]) and torch.equal(results[1], alone[1])


@pytest.mark.parametrize("name", [m for m in methods.names() if (m, "sd1") in CASES])
def test_a_cancel_stops_the_run_at_its_next_network_call_not_its_next_step(name, monkeypatch):
    # one step of a tiling method is many network calls (minutes on a large canvas)
    from anysize.errors import Cancelled

    pipe = tiny_pipeline("sd1")
    adapter = adapt(pipe, native_size=16)
    quick = methods.get(name).demo_options(adapter) or None
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    event, seen = threading.Event(), []
    real = type(adapter)._forward

    def forward(self, x, *args, **kwargs):
        seen.append(x.shape[0])
        if len(seen) == 1:
            event.set()  # cancelled while the first network call runs
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "_forward", forward)
    with pytest.raises(Cancelled, match=r"^cancelled (during step 1|before step 2)/[23]$"):
        _gen(adapter, name, size=(256, 256), options=quick, cancel=event, scheduler="ddim")
    assert len(seen) == 1  # no network call after the cancel, though a tiling step makes many
    monkeypatch.undo()
    assert all(torch.equal(v, state[k]) for k, v in pipe.unet.state_dict().items())
    assert adapter.network_lock.holders() == (0, False)
    plain = _gen(adapter, "direct")  # the pipeline is usable and the same after
    assert torch.equal(plain.latents, _gen(adapt(tiny_pipeline("sd1"), native_size=16), "direct").latents)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_prompts_encoded_from_many_threads_at_once_are_what_they_are_alone(adapters, family):
    # a fast tokenizer's padding settings live on the shared object: unserialised, threads get each
    # other's padding (embeddings of the wrong length or content)
    adapter = adapters(family)
    prompts = ["a red circle", "a blue square on a very long and winding road by the sea", "x"]
    negative = None if family == "flux" else ["ugly"]  # FLUX takes no negative prompt
    alone = [adapter.encode_prompt([p], negative, guidance_scale=5.0).positive.embeds for p in prompts]

    def encode_five_times(i):
        return [adapter.encode_prompt([prompts[i]], negative, guidance_scale=5.0).positive.embeds for _ in range(5)]

    results = _at_once([lambda k=k: encode_five_times(k % len(prompts)) for k in range(6)])
    assert all(torch.equal(e, alone[k % len(prompts)]) for k, five in enumerate(results) for e in five)


@pytest.mark.parametrize("name", methods.names())
def test_runs_on_one_pipeline_from_three_threads_get_what_they_get_alone(name):
    # a network-patching method holds the network to itself while patched (as a LoRA run does): the
    # plain run beside it waits rather than run through the patched network, and a second patching
    # run waits its turn rather than find the network taken
    adapter = adapt(tiny_pipeline(_family(name)), native_size=16)
    method = methods.create(name, **methods.get(name).demo_options(adapter))
    jobs = [(method, "a red circle", 5), (method, "a blue square", 9), ("direct", "a green star", 3)]
    alone = [_gen(adapter, m, prompt=prompt, seed=seed).latents for m, prompt, seed in jobs]
    results = _at_once([lambda job=job: _gen(adapter, job[0], prompt=job[1], seed=job[2]).latents for job in jobs])
    assert all(torch.equal(r, a) for r, a in zip(results, alone)), [float((r - a).abs().max()) for r, a in zip(results, alone)]
    assert adapter.network_lock.holders() == (0, False)
